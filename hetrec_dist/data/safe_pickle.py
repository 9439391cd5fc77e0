"""Reading a pickle without running its code.

pickle.load calls whatever function the file names, so a poses.pkl from a shared folder could run anything.
cryoDRGN's pickles (poses.pkl, ctf.pkl, index .pkl) hold numpy arrays, or torch tensors, in tuples, lists and
dicts; load() rebuilds exactly those and refuses a file that names any other function, in one line, before
calling it. Arrays and scalars have numeric dtypes only, and a dtype's pickled state (numpy's internals: its
flags can make numbers into object pointers) is never handed to numpy. A tensor inside a pickle carries its
storage as a nested torch file, which torch itself reads with weights_only=False: here with weights_only=True.
"""

import io
import pickle
import re

from hetrec_dist.errors import UserError


def _tensor_storage_from_bytes(data):
    import torch  # only pickles that hold tensors need it

    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as err:
        raise UserError(refusal("a tensor's bytes", err, "pickle")) from None


def refusal(path: str, err: Exception, what: str) -> str:
    """One line for torch.load(weights_only=True)'s refusal of `path`, naming the function the file would call,
    or for its failure to read it (what: "pickle", "checkpoint")."""
    # torch words it "Unsupported global: GLOBAL m.f", or for a module it blocks outright (os, posix,
    # subprocess, …) "Trying to load unsupported GLOBAL m.f whose module m is blocked"
    unsupported = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", str(err))
    if unsupported:
        return (f"{path}: refused, the {what} would call {unsupported.group(1)}; hetrec reads only files of "
                "arrays, tensors and plain values, so that a data file never runs code")
    text = str(err).strip()
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if "weights_only" in text:  # never pass on torch's advice to load it with weights_only=False
        reason = unpickler.group(1).strip().splitlines()[0] if unpickler else "not a file of tensors"
    else:
        reason = text.splitlines()[0] if text else type(err).__name__
    return f"{path}: not a readable {what} ({reason})"


def _rebuild_tensor(*args):
    from torch._utils import _rebuild_tensor_v2

    return _rebuild_tensor_v2(*args)


# The dtypes an array or scalar may have: numbers and booleans. An object dtype (or a structured one, whose
# fields may hold objects) would let a pickle's bytes be read as pointers to Python objects.
_NUMERIC_KINDS = "biufc"


def _numeric_dtype(*args):
    """numpy.dtype(*args) as a pickle calls it, refused unless it is a plain numeric dtype."""
    import numpy as np

    dtype = np.dtype(*args[:1])
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise UserError(f"a pickled array of dtype {dtype} (hetrec reads arrays of numbers only)")
    return dtype


def _allowed():
    import codecs
    import collections

    import numpy as np

    allowed = {("collections", "OrderedDict"): collections.OrderedDict,
               ("_codecs", "encode"): codecs.encode,  # bytes in protocols 0-2
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _numeric_dtype,
               ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
               ("torch.storage", "_load_from_bytes"): _tensor_storage_from_bytes}
    # numpy 1 pickles name numpy.core, numpy 2 numpy._core: the functions numpy's own reductions name, taken
    # from those reductions so that either module name reads with the numpy installed
    array_reconstruct, scalar = np.zeros(0).__reduce__()[0], np.float64(0).__reduce__()[0]
    from_buffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5's array reduction
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = array_reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = from_buffer
    return allowed


def _rebuilt_dtype(dtype, state):
    """What numpy.dtype.__setstate__(state) would make of a numeric `dtype`, built anew from the state's byte
    order alone: its other fields (flags, fields, sizes) are numpy's internals, which a hostile pickle could
    set to make numbers into object pointers, and which a plain numeric dtype never needs."""
    import numpy as np

    if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", ">", "|", "=")
            and all(part is None for part in state[2:5])):
        raise UserError(f"a pickled dtype state {str(state)[:60]} (hetrec reads arrays of numbers only)")
    order = "=" if state[1] == "|" else state[1]
    return np.dtype(f"{order}{dtype.kind}{dtype.itemsize}")


class _ArraysOnly(pickle._Unpickler):
    """The pure-Python unpickler (its BUILD can be checked, the C one's cannot), with find_class limited to
    _allowed() and the state of a dtype never handed to numpy (_rebuilt_dtype)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path):
        super().__init__(file)
        self.path, self.allowed = path, _allowed()

    def find_class(self, module, name):
        found = self.allowed.get((module, name))
        if found is None:
            raise UserError(f"{self.path}: refused, the pickle would call {module}.{name}; hetrec reads only "
                            "pickles of numpy arrays and torch tensors in tuples, lists and dicts (as cryoDRGN "
                            "writes them), so that a data file never runs code")
        return found

    def load_build(self):
        import numpy as np

        if len(self.stack) >= 2 and isinstance(self.stack[-2], np.dtype):
            state = self.stack.pop()
            self.stack[-1] = _rebuilt_dtype(self.stack[-1], state)
            return
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def load(path: str):
    """The object pickled in `path`, if it is built only of numpy arrays and scalars, torch tensors, tuples,
    lists, dicts and plain values. Raises UserError (one line) for any other content, an unreadable or damaged
    file, before any function the file names is called."""
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, path).load()
    except UserError as err:
        message = str(err).replace("a tensor's bytes", path, 1)
        raise UserError(message if message.startswith(path) else f"{path}: refused, {message}") from None
    except Exception as err:  # a damaged pickle raises many types
        raise UserError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from None
