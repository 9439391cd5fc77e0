import os
import socket

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from hetrec_dist.cli import main
from hetrec_dist.simulate.atom_models import hinge_model
from hetrec_dist.simulate.dataset import simulate_dataset


def run_cli(*args, expect_ok=True):
    """Run `hetrec ARGS` in-process; returns the click Result."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if expect_ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def free_port():
    """A TCP port on localhost that nobody listens on now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line_error(result, *fragments):
    """A user error: exit status 1, one line starting 'Error:', naming each fragment, and no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])


def store_contents(path):
    """Every array and the attrs of a store, for comparing two stores exactly."""
    group = zarr.open_group(path, mode="r")
    return {name: array[:] for name, array in group.arrays()}, group.attrs.asdict()


def assert_same_store(a, b, ignore_attrs=()):
    arrays_a, attrs_a = store_contents(a)
    arrays_b, attrs_b = store_contents(b)
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)
    for key in ignore_attrs:
        attrs_a.pop(key, None), attrs_b.pop(key, None)
    assert attrs_a == attrs_b


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory):
    """A small simulated dataset: 300 particles, box 32, three stacks."""
    out = str(tmp_path_factory.mktemp("sim") / "sim")
    simulate_dataset(out, hinge_model(), n=300, box=32, snr=0.5, seed=3, images_per_stack=128, show_progress=False)
    return out


@pytest.fixture(scope="session")
def sim_store(sim_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("store") / "particles.zarr")
    run_cli("convert", os.path.join(sim_dir, "particles.star"), "-o", out, "--chunk-images", "32", "-q")
    return out
