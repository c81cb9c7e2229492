"""MTCNN's P/R/O-Nets run with ONNX Runtime: no torch, on the calling thread.

The three networks are written as ONNX graphs, with ``onnx.helper`` (no exporter, no tracing),
from the weights the ``facenet-pytorch`` wheel ships (``{pnet,rnet,onet}.pt``), which
:func:`read_legacy_state_dict` reads without torch. Each graph has dynamic axes (P-Net: height
and width; R-/O-Net: the batch), takes NHWC ``float32`` pixels (0-255) and does the layout
change and the ``(x - 127.5) / 128`` normalisation itself (folded into its first convolution).
The graphs are cached on disk (atomic writes) under :func:`cache_dir`, keyed by the weights'
SHA-256 and :data:`GRAPH_VERSION`; where the cache cannot be written (a read-only container)
they are built in memory at start-up instead (a few hundred milliseconds, needs ``onnx``).

The sessions use one intra-op thread and no spinning: detection runs on several
preprocessing threads at once, and each ``run`` then runs on its caller's thread without
waking other threads that would compete with the model's. ``InferenceSession.run`` is
thread-safe, so one session per network is shared by every thread (:func:`shared_mtcnn`).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import logging
import os
import pickle
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "GRAPH_VERSION",
    "OnnxMtcnn",
    "build_graphs",
    "cache_dir",
    "load_graphs",
    "onnxruntime_available",
    "read_legacy_state_dict",
    "shared_mtcnn",
]

# Bump when the graphs below change, so that stale cached files are not used.
GRAPH_VERSION = 4
_NETS = ("pnet", "rnet", "onet")
_OPSET = 17


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cache_dir() -> Path:
    """``$MTCNN_ONNX_CACHE``, else ``$XDG_CACHE_HOME/dfd/mtcnn`` (``~/.cache/dfd/mtcnn``)."""
    env = os.environ.get("MTCNN_ONNX_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dfd" / "mtcnn"


# --------------------------------------------------------------------------------------------
# Weights: torch's legacy (pre-zip) serialisation, read without torch
# --------------------------------------------------------------------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _Storage:
    def __init__(self, numel: int) -> None:
        self.numel = numel
        self.data: np.ndarray | None = None


class _PendingTensor:
    def __init__(
        self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
    ):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise ValueError("tensor storage missing from the file")
        flat = data[self.offset :]
        need = 1 + sum((n - 1) * st for n, st in zip(self.size, self.stride, strict=True))
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=np.float32)
        if len(flat) < need:
            raise ValueError("tensor extends past its storage")
        strides = tuple(st * 4 for st in self.stride)
        view = np.lib.stride_tricks.as_strided(flat, shape=self.size, strides=strides)
        return np.array(view, dtype=np.float32)


def _rebuild_tensor(
    storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> _PendingTensor:
    return _PendingTensor(storage, int(offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Only what a float32 legacy state dict holds; anything else is refused."""

    def __init__(self, fh: io.BytesIO, storages: dict[str, _Storage]) -> None:
        super().__init__(fh)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch", "FloatStorage"):
            return "float32"
        raise pickle.UnpicklingError(f"refusing {module}.{name} in an MTCNN weights file")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid[:5]
        if dtype != "float32" or (len(pid) > 5 and pid[5] is not None):
            raise pickle.UnpicklingError(f"unsupported storage {pid!r}")
        return self.storages.setdefault(str(key), _Storage(int(numel)))


def read_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A float32 state dict saved by ``torch.save`` in the legacy format, as NumPy arrays.

    The format: pickles of the magic number, the protocol version and the system info, the
    state dict (tensors refer to storages by key), the list of storage keys, then each
    storage's element count (int64) and raw little-endian data. Only an ``OrderedDict`` of
    float tensors is accepted (no code runs while unpickling).
    """
    fh = io.BytesIO(Path(path).read_bytes())
    storages: dict[str, _Storage] = {}
    plain = _RestrictedUnpickler(fh, storages)
    if plain.load() != _LEGACY_MAGIC or plain.load() != _LEGACY_PROTOCOL:
        raise ValueError(f"{path}: not a legacy torch.save file")
    info = plain.load()
    if not isinstance(info, dict) or not info.get("little_endian", False):
        raise ValueError(f"{path}: unsupported byte order")
    state = _RestrictedUnpickler(fh, storages).load()
    keys = _RestrictedUnpickler(fh, storages).load()
    for key in keys:
        storage = storages[str(key)]
        (count,) = struct.unpack("<q", fh.read(8))
        raw = fh.read(count * 4)
        if count != storage.numel or len(raw) != count * 4:
            raise ValueError(f"{path}: truncated storage {key}")
        storage.data = np.frombuffer(raw, dtype="<f4")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    return {str(k): v.array() for k, v in state.items() if isinstance(v, _PendingTensor)}


def read_weights(weight_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{"pnet": state_dict, "rnet": ..., "onet": ...}`` from the wheel's ``.pt`` files."""
    return {name: read_legacy_state_dict(weight_dir / f"{name}.pt") for name in _NETS}


# --------------------------------------------------------------------------------------------
# Graphs
# --------------------------------------------------------------------------------------------


class _Graph:
    """A small builder over ``onnx.helper``: nodes in order, weights as initializers."""

    def __init__(self, name: str, weights: dict[str, np.ndarray]) -> None:
        from onnx import helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
        self.name = name
        self.w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, value: np.ndarray, dtype: Any = np.float32) -> str:
        self._n += 1
        name = f"c{self._n}"
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.inits.append(self.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        self._n += 1
        out = f"{op_type.lower()}{self._n}"
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def pixels(self, name: str) -> str:
        """NHWC pixels (0-255) -> NCHW (the ``(x - 127.5) / 128`` is in the first conv)."""
        return self.op("Transpose", [name], perm=[0, 3, 1, 2])

    def conv(self, x: str, layer: str, normalise: bool = False) -> str:
        w, b = self.w[f"{layer}.weight"], self.w[f"{layer}.bias"]
        if normalise:  # conv((x - 127.5) * s) == conv'(x): fold the normalisation in
            b = b - 127.5 * _SCALE * w.astype(np.float64).sum(axis=(1, 2, 3))
            w = w * _SCALE
        return self.op("Conv", [x, self.const(w), self.const(b)])

    def prelu(self, x: str, slope: np.ndarray) -> str:
        """PReLU as ``x + (1 - slope) * relu(-x)``.

        On an ``(N, C, H, W)`` tensor both products are 1x1 depthwise convolutions (the first
        with the ReLU fused, the second with the sum fused), which ONNX Runtime keeps in its
        blocked NCHWc layout between the real convolutions; its ``PRelu`` with a per-channel
        slope is several times slower. On ``(N, C)`` it is ``x + (slope - 1) * min(x, 0)``.
        """
        if slope.ndim == 1:
            neg = self.op("Min", [x, self.const(np.array(0.0))])
            return self.op("Add", [x, self.op("Mul", [neg, self.const(slope - 1.0)])])
        c = slope.shape[0]
        minus = self.op("Conv", [x, self.const(-np.ones((c, 1, 1, 1)))], group=c)
        relu_neg = self.op("Relu", [minus])
        scaled = self.op("Conv", [relu_neg, self.const((1.0 - slope).reshape(c, 1, 1, 1))], group=c)
        return self.op("Add", [scaled, x])

    def conv_prelu(self, x: str, layer: str, prelu: str, normalise: bool = False) -> str:
        x = self.conv(x, layer, normalise)
        return self.prelu(x, self.w[f"{prelu}.weight"].reshape(-1, 1, 1))

    def pool(self, x: str, kernel: int, stride: int) -> str:
        k, s = [kernel, kernel], [stride, stride]
        return self.op("MaxPool", [x], kernel_shape=k, strides=s, ceil_mode=1)

    def dense(self, x: str, layer: str, weight: np.ndarray | None = None) -> str:
        w = self.w[f"{layer}.weight"] if weight is None else weight
        return self.op("Gemm", [x, self.const(w), self.const(self.w[f"{layer}.bias"])], transB=1)

    def dense_prelu(self, x: str, layer: str, prelu: str, weight: np.ndarray) -> str:
        return self.prelu(self.dense(x, layer, weight), self.w[f"{prelu}.weight"])

    def face_prob(self, x: str, layer: str, conv: bool) -> str:
        """softmax(logits)[:, 1] as sigmoid(logit1 - logit0): one output, no Softmax node."""
        w, b = self.w[f"{layer}.weight"], self.w[f"{layer}.bias"]
        w, b = w[1:2] - w[0:1], b[1:2] - b[0:1]
        if conv:
            logit = self.op("Conv", [x, self.const(w), self.const(b)])
        else:
            logit = self.op("Gemm", [x, self.const(w), self.const(b)], transB=1)
        return self.op("Sigmoid", [logit])

    def model(self, inputs: list[Any], outputs: dict[str, tuple[str, list[Any]]]) -> bytes:
        from onnx import TensorProto, checker

        outs = []
        for public, (internal, shape) in outputs.items():
            self.nodes.append(self.helper.make_node("Identity", [internal], [public]))
            outs.append(self.helper.make_tensor_value_info(public, TensorProto.FLOAT, shape))
        graph = self.helper.make_graph(self.nodes, self.name, inputs, outs, self.inits)
        model = self.helper.make_model(
            graph,
            opset_imports=[self.helper.make_opsetid("", _OPSET)],
            producer_name="dfd-mtcnn",
            producer_version=str(GRAPH_VERSION),
        )
        model.ir_version = _IR_VERSION
        checker.check_model(model)
        data: bytes = model.SerializeToString()
        return data

    def input(self, name: str, shape: list[Any]) -> Any:
        from onnx import TensorProto

        return self.helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


_SCALE = 0.0078125
_IR_VERSION = 8


def _flatten_weight(weight: np.ndarray, channels: int, side: int) -> np.ndarray:
    """A dense weight over ``permute(0, 3, 2, 1).flatten`` re-ordered for a plain NCHW flatten.

    facenet-pytorch flattens as (W, H, C); the graph flattens as (C, H, W) and skips the
    transpose, so the weight's columns are re-ordered once here instead.
    """
    out = weight.shape[0]
    return weight.reshape(out, side, side, channels).transpose(0, 3, 2, 1).reshape(out, -1)


def _pnet_graph(w: dict[str, np.ndarray]) -> bytes:
    g = _Graph("pnet", w)
    image = g.input("image", [1, "height", "width", 3])
    x = g.conv_prelu(g.pixels("image"), "conv1", "prelu1", normalise=True)
    x = g.pool(x, 2, 2)
    x = g.conv_prelu(x, "conv2", "prelu2")
    x = g.conv_prelu(x, "conv3", "prelu3")
    prob = g.face_prob(x, "conv4_1", conv=True)
    reg = g.conv(x, "conv4_2")
    return g.model([image], {"prob": (prob, [1, 1, "oh", "ow"]), "reg": (reg, [1, 4, "oh", "ow"])})


# ONNX Runtime's fast CPU convolutions keep activations in blocks of 16 channels (AVX-512;
# 8 with AVX2). A layer with another count (R-Net's first: 28) is reordered to plain NCHW and
# back around it, and its max-pool runs on the slow NCHW path: a fifth of R-Net's time.
_CHANNEL_BLOCK = 16


def _pad_channels(
    w: dict[str, np.ndarray], conv: str, prelu: str, following: str
) -> dict[str, np.ndarray]:
    """``w`` with zero output channels appended to ``conv`` (to a multiple of
    :data:`_CHANNEL_BLOCK`), and to its PReLU, that ``following`` (the next convolution) reads
    with zero weights: every output is unchanged (the padding channels are 0 throughout)."""
    out = dict(w)
    extra = -w[f"{conv}.weight"].shape[0] % _CHANNEL_BLOCK
    if extra == 0:
        return out

    def pad(array: np.ndarray, axis: int) -> np.ndarray:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, extra)
        return np.pad(array, widths)

    out[f"{conv}.weight"] = pad(w[f"{conv}.weight"], 0)
    out[f"{conv}.bias"] = pad(w[f"{conv}.bias"], 0)
    out[f"{prelu}.weight"] = pad(w[f"{prelu}.weight"], 0)
    out[f"{following}.weight"] = pad(w[f"{following}.weight"], 1)
    return out


def _rnet_graph(w: dict[str, np.ndarray]) -> bytes:
    g = _Graph("rnet", _pad_channels(w, "conv1", "prelu1", "conv2"))
    crops = g.input("crops", ["n", 24, 24, 3])
    x = g.conv_prelu(g.pixels("crops"), "conv1", "prelu1", normalise=True)
    x = g.pool(x, 3, 2)
    x = g.conv_prelu(x, "conv2", "prelu2")
    x = g.pool(x, 3, 2)
    x = g.conv_prelu(x, "conv3", "prelu3")
    x = g.op("Flatten", [x], axis=1)
    x = g.dense_prelu(x, "dense4", "prelu4", _flatten_weight(g.w["dense4.weight"], 64, 3))
    prob = g.face_prob(x, "dense5_1", conv=False)
    reg = g.dense(x, "dense5_2")
    return g.model([crops], {"prob": (prob, ["n", 1]), "reg": (reg, ["n", 4])})


def _onet_graph(w: dict[str, np.ndarray]) -> bytes:
    g = _Graph("onet", w)
    crops = g.input("crops", ["n", 48, 48, 3])
    x = g.conv_prelu(g.pixels("crops"), "conv1", "prelu1", normalise=True)
    x = g.pool(x, 3, 2)
    x = g.conv_prelu(x, "conv2", "prelu2")
    x = g.pool(x, 3, 2)
    x = g.conv_prelu(x, "conv3", "prelu3")
    x = g.pool(x, 2, 2)
    x = g.conv_prelu(x, "conv4", "prelu4")
    x = g.op("Flatten", [x], axis=1)
    x = g.dense_prelu(x, "dense5", "prelu5", _flatten_weight(g.w["dense5.weight"], 128, 3))
    prob = g.face_prob(x, "dense6_1", conv=False)
    reg = g.dense(x, "dense6_2")
    pts = g.dense(x, "dense6_3")
    outputs = {"prob": (prob, ["n", 1]), "reg": (reg, ["n", 4]), "pts": (pts, ["n", 10])}
    return g.model([crops], outputs)


def build_graphs(weights: dict[str, dict[str, np.ndarray]]) -> dict[str, bytes]:
    """Serialised ONNX models for ``pnet``, ``rnet`` and ``onet`` from NumPy state dicts."""
    return {
        "pnet": _pnet_graph(weights["pnet"]),
        "rnet": _rnet_graph(weights["rnet"]),
        "onet": _onet_graph(weights["onet"]),
    }


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def _weights_key(weight_dir: Path) -> str:
    digest = hashlib.sha256(f"dfd-mtcnn-onnx/{GRAPH_VERSION}".encode())
    for name in _NETS:
        digest.update(hashlib.sha256((weight_dir / f"{name}.pt").read_bytes()).digest())
    return digest.hexdigest()[:20]


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # readable by other users, like a file open() would make
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_graphs(
    weight_dir: Path, cache: Path | None = None, rebuild: bool = False
) -> dict[str, bytes]:
    """The three graphs from the cache, else built from the weights (and cached).

    A cache that cannot be read or written is not an error: the graphs are then built in
    memory.
    """
    folder = (cache or cache_dir()) / _weights_key(weight_dir)
    paths = {name: folder / f"{name}.onnx" for name in _NETS}
    if not rebuild:
        try:
            return {name: path.read_bytes() for name, path in paths.items()}
        except OSError:
            pass
    graphs = build_graphs(read_weights(weight_dir))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, path in paths.items():
            _write_atomic(path, graphs[name])
    except OSError as exc:
        logger.info("MTCNN ONNX graphs not cached in %s (%s); built in memory", folder, exc)
    return graphs


# --------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------

# R-Net runs in chunks of at most this many crops: smaller tensors stay in cache (a video
# frame's background can give it a few hundred candidates).
_RNET_CHUNK = 16


class OnnxMtcnn:
    """P/R/O-Net as ONNX Runtime sessions; one instance is shared by every thread."""

    runtime = "onnx"

    def __init__(self, graphs: dict[str, bytes]) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # Each run on its caller's thread: detection already runs on several threads at once.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        # Input shapes change with every image: no memory plan kept per shape.
        opts.enable_mem_pattern = False
        opts.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        self._sessions = {
            name: ort.InferenceSession(graphs[name], opts, providers=providers) for name in _NETS
        }

    def pnet(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prob, reg = self._sessions["pnet"].run(["prob", "reg"], {"image": image[None]})
        return prob[0, 0], reg[0]

    def rnet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        session = self._sessions["rnet"]
        # Chunks of equal size (17 crops: 9 + 8, not 16 + 1: a run costs tens of microseconds).
        chunks = max(1, -(-len(crops) // _RNET_CHUNK))
        parts = [
            session.run(["prob", "reg"], {"crops": part}) for part in np.array_split(crops, chunks)
        ]
        if len(parts) == 1:
            prob, reg = parts[0]
        else:
            prob = np.concatenate([p[0] for p in parts])
            reg = np.concatenate([p[1] for p in parts])
        return prob[:, 0], reg

    def onet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        prob, reg, pts = self._sessions["onet"].run(["prob", "reg", "pts"], {"crops": crops})
        return prob[:, 0], reg, pts


_shared_lock = threading.Lock()
_shared: dict[Path, OnnxMtcnn] = {}


def shared_mtcnn(weight_dir: Path) -> OnnxMtcnn:
    """One :class:`OnnxMtcnn` per weights folder and process (its sessions are thread-safe).

    Raises ImportError when onnxruntime (or, with no usable cache, onnx) is not installed.
    """
    with _shared_lock:
        nets = _shared.get(weight_dir)
        if nets is None:
            try:
                nets = OnnxMtcnn(load_graphs(weight_dir))
            except ImportError:
                raise
            except Exception as exc:  # a damaged cached file: build the graphs again
                logger.warning("MTCNN ONNX graphs could not be loaded (%s); rebuilding", exc)
                nets = OnnxMtcnn(load_graphs(weight_dir, rebuild=True))
            _shared[weight_dir] = nets
        return nets
