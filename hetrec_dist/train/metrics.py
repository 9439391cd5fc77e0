"""Metrics: a small logger interface, written by one rank, with a TensorBoard implementation."""

import logging

import numpy as np

from hetrec_dist.data.atomic_files import open_log
from hetrec_dist.errors import UserError


class MetricsLogger:
    """Does nothing: what ranks other than the logging rank use."""

    def scalars(self, values, step):
        pass

    def images(self, tag, images, step):
        pass

    def histogram(self, tag, values, step):
        pass

    def close(self):
        pass


class TensorBoardLogger(MetricsLogger):
    def __init__(self, log_dir):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir)

    def scalars(self, values, step):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def images(self, tag, images, step):
        """images: N x H x W arrays, each scaled to [0, 1] on its own."""
        low = images.min(axis=(1, 2), keepdims=True)
        span = np.maximum(images.max(axis=(1, 2), keepdims=True) - low, 1e-12)
        self.writer.add_images(tag, ((images - low) / span)[:, None], step, dataformats="NCHW")

    def histogram(self, tag, values, step):
        """values: a 1-D array, shown as its distribution at `step`."""
        self.writer.add_histogram(tag, np.asarray(values), step)

    def close(self):
        self.writer.close()


class _QuietFileHandler(logging.FileHandler):
    """A line that cannot be written (a full disk) is dropped, not reported with a traceback on stderr: the
    error that stops the run says what happened. The log is never opened through a planted link."""

    def handleError(self, record):
        pass

    def _open(self):
        return open_log(self.baseFilename)


def file_logger(path):
    """A logger that appends timestamped lines to RUN/train.log."""
    logger = logging.getLogger(f"hetrec.{path}")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        try:
            handler = _QuietFileHandler(path, encoding="utf-8")
        except OSError as err:  # a link planted at RUN/train.log (ELOOP), a folder there
            raise UserError(f"{path}: cannot append to it ({err.strerror}): a symbolic link or not a file; "
                            "remove it if you trust this folder") from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger
