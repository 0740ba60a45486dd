"""A corpus of malicious checkpoints: `read_checkpoint` refuses every one without running any of it.

Each payload would create the sentinel file if any code from it ran; none may. The corpus covers the
naive reduce to a shell call, attribute chains from admitted modules to builtins (protocol 4
dotted names), calls and state changes on admitted objects, nested pickles, and the three carriers
a checkpoint comes in: a plain pickle (`.pkl`), a torch zip (`data.pkl`), torch's legacy format.
"""

import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch

from vlmswap.checkpoint import UnsafeCheckpointError, read_checkpoint


@pytest.fixture
def sentinel(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "code from a checkpoint ran"


def _str(text: str) -> bytes:  # SHORT_BINUNICODE
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


def _global(module: str, name: str) -> bytes:  # protocol 2 GLOBAL
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _stack_global(module: str, name: str) -> bytes:  # protocol 4 STACK_GLOBAL: dotted names walk attributes
    return _str(module) + _str(name) + b"\x93"


def _call(func: bytes, *args: str) -> bytes:
    return func + b"(" + b"".join(_str(a) for a in args) + b"tR"  # MARK args TUPLE REDUCE


def _proto(n: int, body: bytes) -> bytes:
    return b"\x80" + bytes([n]) + body + b"."


def _in_dict(payload: bytes) -> bytes:
    """{"model": {}, "x": payload}: the payload hides among the weights."""
    return b"}" + _str("model") + b"}" + b"s" + _str("x") + payload + b"s"


class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _shell(sentinel):
    return f"touch {sentinel}"


def _python(sentinel):
    return f"open({str(sentinel)!r}, 'w').close()"


def _payloads(sentinel) -> dict[str, bytes]:
    """Raw pickles, each of which runs code under `pickle.load`."""
    import subprocess

    shell, python = _shell(sentinel), _python(sentinel)
    corpus = {
        "reduce-os.system": pickle.dumps({"model": {}, "x": _Reduce(os.system, shell)}, protocol=2),
        "reduce-os.system-p5": pickle.dumps({"model": {}, "x": _Reduce(os.system, shell)}, protocol=5),
        "reduce-subprocess": pickle.dumps(_Reduce(subprocess.call, ["touch", str(sentinel)]), protocol=4),
        "builtins.exec": pickle.dumps(_Reduce(exec, python), protocol=2),
        "builtins.eval": pickle.dumps(_Reduce(eval, python), protocol=4),
        # attribute chains: protocol 4 resolves dotted names by getattr from the module
        "chain-torch.serialization.os": _proto(4, _call(_stack_global("torch", "serialization.os.system"), shell)),
        "chain-torch-builtins": _proto(4, _call(_stack_global("torch", "builtins.exec"), python)),
        "chain-numpy-pickle": _proto(4, _stack_global("numpy", "lib._npyio_impl.pickle.loads") + b"(" + b"C" + bytes([len(inner := pickle.dumps(_Reduce(os.system, shell), 2))])
                                     + inner + b"tR"),
        "chain-protocol2-dotted": _proto(2, _call(_global("torch", "serialization.os.system"), shell)),
        # getattr(getattr(torch.serialization, "os"), "system")(shell)
        "getattr-gadget": _proto(2, _global("builtins", "getattr") + b"(" + _global("builtins", "getattr") + b"("
                                 + _global("torch", "serialization") + _str("os") + b"tR" + _str("system") + b"tR"
                                 + b"(" + _str(shell) + b"tR"),
        # numpy functions that unpickle files, and unpickling nested in unpickling
        "numpy.load-allow_pickle": _proto(2, _global("numpy", "load") + b"(" + _str(str(sentinel) + ".npy")
                                          + b"N\x88tR"),
        "numpy.lib.npyio": _proto(4, _call(_stack_global("numpy.lib.npyio", "load"), str(sentinel) + ".npy")),
        "pickle.loads-nested": pickle.dumps(_Reduce(pickle.loads, pickle.dumps(_Reduce(os.system, shell))), protocol=4),
        # torch.load(path, None, pickle): with a pickle module given, torch loads without weights_only
        "torch.load-nested": _proto(2, _global("torch.serialization", "load") + b"(" + _str(str(sentinel) + ".pth")
                                    + b"N" + _global("torch.serialization", "pickle") + b"tR"),
        # admitted globals misused: state written into a function or a class, calls of non-globals
        "build-on-admitted-function": _proto(2, _global("torch._utils", "_rebuild_tensor") + b"N}"
                                             + _str("__kwdefaults__") + b"}s\x86b"),
        # a tensor's state carries its backward hooks: callables that run later, in backward
        "build-on-tensor-hooks": _proto(2, _global("torch", "Tensor") + b")R" + b"(\x89N}" + _str("h")
                                        + _global("_codecs", "encode") + b"stb"),
        "build-on-admitted-class": _proto(2, _global("argparse", "Namespace") + b"N}" + _str("__repr__")
                                          + _global("collections", "Counter") + b"s\x86b"),
        "reconstruct-object-from-bytes": _proto(2, _global("numpy.core.multiarray", "_reconstruct") + b"("
                                                + _global("numpy", "ndarray") + b"K\x01\x85" + _str("O") + b"tR"
                                                + b"(K\x01K\x01\x85" + _global("numpy", "dtype") + b"(" + _str("O8")
                                                + b"\x89\x88tR" + b"\x89" + b"C\x08" + struct.pack("<Q", 0x41414141)
                                                + b"tb"),
        "frombuffer-object": _proto(2, _global("numpy.core.numeric", "_frombuffer") + b"(" + b"C\x08"
                                    + struct.pack("<Q", 0x41414141) + _global("numpy", "dtype") + b"("
                                    + _str("O8") + b"\x89\x88tR" + b"K\x01\x85" + _str("C") + b"tR"),
        "ext-registry": _proto(2, b"\x82\x01" + _str(shell) + b"\x85R"),
        "inst-opcode": b"(S'" + shell.encode() + b"'\nios\nsystem\n.",  # protocol 0 INST
        "persistent-id": _proto(2, _str("storage") + b"Q"),
    }
    return corpus


def _write_npy_payload(sentinel):
    """The file the numpy.load gadgets would open: an object array whose unpickling runs code."""
    np.save(str(sentinel) + ".npy", np.array([_Reduce(os.system, _shell(sentinel))], dtype=object), allow_pickle=True)
    torch.save({"x": _Reduce(os.system, _shell(sentinel))}, str(sentinel) + ".pth")


# the payloads that run code under a plain `pickle.load` (the others attack the reader's own rules:
# state written into admitted functions and classes, object arrays from raw bytes, persistent ids)
LIVE = ["builtins.eval", "builtins.exec", "chain-numpy-pickle", "chain-torch-builtins", "chain-torch.serialization.os",
        "getattr-gadget", "inst-opcode", "numpy.load-allow_pickle", "pickle.loads-nested", "reduce-os.system",
        "reduce-os.system-p5", "reduce-subprocess", "torch.load-nested"]


@pytest.mark.parametrize("name", LIVE)
def test_the_corpus_is_live_under_plain_pickle(name, tmp_path):
    import subprocess
    import sys

    armed = tmp_path / "armed"
    _write_npy_payload(armed)
    (tmp_path / "payload").write_bytes(_payloads(armed)[name])
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())",
                    str(tmp_path / "payload")], capture_output=True, timeout=120)
    assert armed.exists()


@pytest.mark.parametrize("name", sorted(_payloads("/x")))
@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_a_malicious_plain_pickle_is_refused_unrun(name, suffix, tmp_path, sentinel):
    _write_npy_payload(sentinel)
    path = tmp_path / f"model{suffix}"
    path.write_bytes(_payloads(sentinel)[name])
    with pytest.raises(ValueError, match=str(path).replace(".", r"\.")):  # UnsafeCheckpointError is one
        read_checkpoint(path)


@pytest.mark.parametrize("name,refused", [("reduce-os.system", "posix.system"), ("builtins.exec", "exec"),
                                          ("chain-torch.serialization.os", "torch.serialization.os.system"),
                                          ("numpy.load-allow_pickle", "numpy.load"),
                                          ("torch.load-nested", "torch.serialization.load")])
def test_the_refusal_names_the_file_and_the_global(name, refused, tmp_path, sentinel):
    path = tmp_path / "model_final.pkl"
    path.write_bytes(_payloads(sentinel)[name])
    with pytest.raises(UnsafeCheckpointError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and refused in message and "Nothing from it was run" in message


def _torch_zip_with(data_pkl: bytes, path) -> None:
    """A genuine torch zip (one tensor) whose data.pkl is replaced by `data_pkl`."""
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            data = source.read(info.filename)
            out.writestr(info.filename, data_pkl if info.filename.endswith("/data.pkl") else data)


def test_a_genuine_torch_zip_rebuilt_by_the_test_still_reads(tmp_path):
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as z:
        data_pkl = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    _torch_zip_with(data_pkl, tmp_path / "ok.pth")
    assert torch.equal(read_checkpoint(tmp_path / "ok.pth")["w"], torch.ones(2))


@pytest.mark.parametrize("name", ["reduce-os.system", "builtins.exec", "chain-protocol2-dotted", "getattr-gadget",
                                  "numpy.load-allow_pickle", "chain-torch.serialization.os", "torch.load-nested",
                                  "build-on-admitted-function", "build-on-admitted-class", "inst-opcode"])
def test_a_payload_inside_a_torch_zip_is_refused_unrun(name, tmp_path, sentinel):
    _write_npy_payload(sentinel)
    path = tmp_path / "evil.pth"
    _torch_zip_with(_payloads(sentinel)[name], path)
    with pytest.raises(ValueError, match="evil.pth"):
        read_checkpoint(path)


def test_torch_save_of_a_payload_is_refused_in_both_torch_formats(tmp_path, sentinel):
    for legacy in (False, True):
        path = tmp_path / f"evil-{legacy}.pth"
        torch.save({"model": {"w": torch.ones(1)}, "x": _Reduce(os.system, _shell(sentinel))}, path,
                   _use_new_zipfile_serialization=not legacy)
        with pytest.raises(UnsafeCheckpointError, match=r"refused.*system"):
            read_checkpoint(path)


def test_a_nested_pickle_stays_bytes(tmp_path, sentinel):
    inner = pickle.dumps(_Reduce(os.system, _shell(sentinel)))
    path = tmp_path / "nested.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "blob": inner}, protocol=4))
    assert read_checkpoint(path)["blob"] == inner  # returned as data, never unpickled


def test_admitted_torch_functions_keep_their_state(tmp_path, sentinel):
    before = torch._utils._rebuild_tensor.__kwdefaults__
    path = tmp_path / "x.pkl"
    path.write_bytes(_payloads(sentinel)["build-on-admitted-function"])
    with pytest.raises(ValueError):
        read_checkpoint(path)
    assert torch._utils._rebuild_tensor.__kwdefaults__ is before
