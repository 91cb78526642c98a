"""Layer kinds, one home each: parameters and their draw order, the batched forward, the NNGP
kernel step and the rescaling rule (in the spirit of neural-tangents' ``stax``).

A network is a list of :class:`Layer` objects (``volume.models.layer_shapes`` builds it from a
spec); each is a linear map with a weight and a bias, followed (unless it is the last layer) by
the spec's activation and, for a conv layer, an optional 2x2 pooling. A kind is a subclass of
``Layer`` registered in :data:`KINDS`; ``Layer("dense", ...)`` builds the subclass of its kind.
What a kind knows:

* **Parameters and draw order.** ``weight_shape`` (dense (out, in); conv (C_out, C_in, k, k)),
  ``bias_shape`` (out,), ``fan_in``; ``stream_shapes(biased)``: the tensors this layer takes
  from the random stream, in order (weight row-major, then the bias only if sigma_b > 0), so
  that a network's stream order is its layers' in turn (``volume.models.stream_tensors``).
  ``scale``: standard draws -> weight * sigma_w / sqrt(fan_in), bias * sigma_b.
* **Forward, batched over B draws** (no Python loop over draws). The activations of B draws
  on M inputs are held in the layout the next product wants: after a dense layer (B, units, M)
  (inputs along the last axis: the first layer is one product W (B*units, d) @ X^T (d, M), later
  ones one batched product, biases through ``addmm``/``baddbmm``); after a conv layer
  (M, B*C, H, W) (one grouped convolution with groups = B, 'same' padding). A dense layer after
  a conv layer flattens channel-major (C, H, W). The first layer reads the shared inputs
  prepared by its ``inputs(x)``. With ``out=`` buffers (the sampler) products write into them
  and the activation runs in place.
* **NNGP kernel step** (``nngp``): how the second moments of its input become those of its
  output in the infinite-width limit (module ``volume.gp.kernels`` runs the chain; see
  DESIGN.md "NNGP kernel"). Moments of a pair of inputs (x, x') are a matrix entry after a
  dense layer and, after a conv layer, a map over pixel pairs (q, q + D) for offsets D in a
  box of radius r: K_D[q] = Cov(z(x, q), z(x', q + D)).

    dense: K = sigma_b^2 + sigma_w^2 E_in,  E_in = mean over input features of products
           (of a conv stack: mean over pixels q of the offset-0 entry, i.e. flatten);
    conv:  K_D[q] = sigma_b^2 + (sigma_w^2 / k^2) sum_{d in patch} E_D[q + d] (zero padding:
           entries whose pixel q + d or q + d + D is outside the image are 0)
           (Novak et al. 2019, "Bayesian deep CNNs with many channels are GPs", eq. 7;
           Garriga-Alonso et al. 2019): a convolution keeps the offset D;
    then   E = E_{(u, u') ~ N(0, [[K_xx, K], [K, K_x'x']])} [phi(u) phi(u')] with the
           activation's closed form (volume.activations), variances from the same chain on
           (x, x) and (x', x');
    avg pool 2x2:  E'_D'[q'] = (1/16) sum_{a, b in {0,1}^2} E_{2D' + b - a}[2q' + a];
    max pool: no closed form (as in neural-tangents): the analytic kernel refuses it.

  The readout needs the offset-0 moments only; each conv layer's ``input_radius`` says which
  offsets it needs of its input (a pooling doubles the radius and adds one), so a CNN without
  pooling propagates the pixel diagonal only, and one with pooling a band of offsets.
* **Rescaling rule** (``volume.reparam``): the units of a hidden layer are the rows of its
  weight (dim 0) and its bias; ``rescale_out`` multiplies unit u's incoming parameters by s[u],
  the next layer's ``rescale_in`` divides the weights that read unit u by s[u] (a dense layer
  after a conv layer reads C*H*W flattened features, channel-major), likewise ``permute_out``
  and ``permute_in`` (pooling, max or average, commutes with a positive per-channel scale).

Adding a layer kind: a subclass here with these methods, registered in ``KINDS``, and the
lines of :func:`layer_shapes` that place it in an architecture. Adding an activation: a row of
``volume.activations.ACTIVATIONS``.

>>> conv = Layer("conv", (8, 1, 3, 3), 9, pool="avg")
>>> type(conv).__name__, conv.stream_shapes(biased=True), conv.input_radius(0)
('Conv', [(8, 1, 3, 3), (8,)], 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from typing import TYPE_CHECKING

import numpy as np

from volume.activations import Activation

if TYPE_CHECKING:  # torch is imported where a forward runs, so that cost checks (volume.limits) need none
    import torch


@dataclass(frozen=True)
class Layer:
    """One layer; ``Layer(kind, ...)`` returns the subclass of ``kind`` (see :data:`KINDS`)."""

    kind: str  # "dense" | "conv"
    weight_shape: tuple[int, ...]
    fan_in: int
    pool: str = "none"  # after the activation, conv layers only
    last: bool = False

    def __new__(cls, *args, **kwargs):
        if cls is Layer:
            kind = args[0] if args else kwargs.get("kind", "dense")
            if kind not in KINDS:
                raise ValueError(f"layer kind {kind!r} is unknown: one of {', '.join(KINDS)}")
            cls = KINDS[kind]
        return object.__new__(cls)

    # ---- parameters and draw order ------------------------------------------------------
    @property
    def bias_shape(self) -> tuple[int, ...]:
        return (self.weight_shape[0],)

    @property
    def n_params(self) -> int:
        return math.prod(self.weight_shape) + self.weight_shape[0]

    def positions(self, in_shape: tuple[int, ...]) -> int:
        """Positions at which the weight is applied per input (dense 1; conv the H x W pixels):
        the factor of its multiply-adds and activations."""
        return 1

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one input's activations after this layer (pooling included)."""
        return (self.weight_shape[0],)

    def stream_shapes(self, biased: bool) -> list[tuple[int, ...]]:
        """Per-draw shapes of the tensors this layer takes from the random stream, in order."""
        return [tuple(self.weight_shape)] + ([tuple(self.bias_shape)] if biased else [])

    def scale(self, w: torch.Tensor, b: torch.Tensor | None, sigma_w: float,
              sigma_b: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Standard draws (B, *weight_shape), (B, out) or None -> the prior's parameters (new
        tensors): w sigma_w / sqrt(fan_in), b sigma_b (zeros when b is None)."""
        ws = w * (sigma_w / math.sqrt(self.fan_in))
        bs = b * sigma_b if b is not None else w.new_zeros(w.shape[0], *self.bias_shape)
        return ws, bs

    def scale_(self, w: torch.Tensor, b: torch.Tensor | None, sigma_w: float, sigma_b: float) -> None:
        """:meth:`scale` in place (the sampler's stream buffers)."""
        w.mul_(sigma_w / math.sqrt(self.fan_in))
        if b is not None:
            b.mul_(sigma_b)

    # ---- forward ----------------------------------------------------------------------
    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The shared inputs (M, *input_shape) in the form this layer reads as a first layer."""
        raise NotImplementedError

    def forward(self, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, act: Activation, *,
                shared: bool, out: torch.Tensor | None = None) -> torch.Tensor:
        """Activations after this layer of B = w.shape[0] draws (layouts: module docstring).
        ``shared``: h is the shared input of :meth:`inputs`; ``b`` None: no bias."""
        raise NotImplementedError

    def _act(self, z: torch.Tensor, act: Activation, inplace: bool) -> torch.Tensor:
        if self.last:
            return z
        return act.inplace()(z) if inplace else act.fn()(z)

    # ---- NNGP kernel --------------------------------------------------------------------
    def nngp_unsupported(self) -> str:
        """Why this layer has no analytic kernel step (empty if it has one)."""
        return ""

    def input_radius(self, radius: int) -> int:
        """Offsets (box radius) this layer needs of its input's moments so that its output's
        moments are known up to ``radius`` (dense: the pixel diagonal of a flattened input)."""
        return 0

    def input_moments(self, xr: np.ndarray, xc: np.ndarray, diagonal: bool, radius: int) -> np.ndarray:
        """Second moments of the raw inputs (the first layer's input), in this kind's form."""
        raise NotImplementedError

    def nngp(self, e: np.ndarray, act: Activation, sigma_w: float, sigma_b: float, diagonal: bool,
             var: tuple[np.ndarray, np.ndarray] | None, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """One kernel step: input moments ``e`` -> (output moments E, or the covariance K for the
        last layer; the pre-activation variances used). ``diagonal``: the pairs are (x, x) (leading
        dim M) and the variances come from K itself; else pairs (rows R, columns M) and ``var``
        = (variances of the rows, of the columns) from the diagonal pass. ``radius``: offsets of
        the output moments wanted (conv)."""
        raise NotImplementedError

    # ---- rescaling rule -----------------------------------------------------------------
    def rescale_out(self, w: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit u's incoming weights and bias times s[u] (one network's w, b; new tensors)."""
        return w * s.reshape((-1,) + (1,) * (w.dim() - 1)), b * s

    def permute_out(self, w: torch.Tensor, b: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit u becomes old unit perm[u]."""
        return w[perm], b[perm]

    def _repeat(self, w: torch.Tensor, units: int) -> int:
        repeat = w.shape[1] // units
        if repeat * units != w.shape[1]:
            raise ValueError(f"next layer has {w.shape[1]} inputs, not a multiple of {units} units")
        return repeat

    def rescale_in(self, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """This layer's weights that read unit u of the previous layer divided by s[u]."""
        cols = s.repeat_interleave(self._repeat(w, s.numel()))  # conv -> dense: channel-major flatten
        return w / cols.reshape((1, -1) + (1,) * (w.dim() - 2))

    def permute_in(self, w: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        """This layer's weights with the previous layer's units permuted (u <- perm[u])."""
        repeat = self._repeat(w, perm.numel())
        cols = perm[:, None] * repeat + perm.new_tensor(range(repeat))[None]
        return w[:, cols.reshape(-1)]


class Dense(Layer):
    """Dense layer: weight (out, in), fan_in = in."""

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1).t().contiguous()  # (d, M)

    def forward(self, h, w, b, act, *, shared, out=None):
        import torch

        n, o = w.shape[0], w.shape[1]
        if shared:  # (d, M): one product for the whole sub-batch
            m = h.shape[1]
            w2 = w.reshape(n * o, -1)
            dst = None if out is None else out.view(n * o, m)
            if b is None:
                z = torch.mm(w2, h, out=dst) if dst is not None else torch.mm(w2, h)
            elif dst is not None:
                z = torch.addmm(b.reshape(n * o, 1), w2, h, out=dst)
            else:
                z = torch.addmm(b.reshape(n * o, 1), w2, h)
            z = z.view(n, o, m)
        else:
            if h.dim() == 4:  # after a conv layer: (M, B*C, H, W) -> (B, C*H*W, M), channel-major
                h = h.reshape(h.shape[0], n, -1).permute(1, 2, 0)
            if b is None:
                z = torch.bmm(w, h, out=out) if out is not None else torch.bmm(w, h)
            elif out is not None:
                z = torch.baddbmm(b.view(n, o, 1), w, h, out=out)
            else:
                z = torch.baddbmm(b.view(n, o, 1), w, h)
        return self._act(z, act, out is not None)

    # NNGP: moments of pairs are (R, M) (or (M,) on the diagonal)
    def input_moments(self, xr, xc, diagonal, radius):
        xr, xc = xr.reshape(xr.shape[0], -1), xc.reshape(xc.shape[0], -1)
        d = xr.shape[1]
        return np.einsum("ij,ij->i", xr, xr) / d if diagonal else (xr @ xc.T) / d

    def nngp(self, e, act, sigma_w, sigma_b, diagonal, var, radius):
        if e.ndim == (1 if diagonal else 2) + 3:  # a conv stack's moments: flatten = mean over pixels, offset 0
            r = (math.isqrt(e.shape[-3]) - 1) // 2
            e = e[..., (2 * r + 1) * r + r, :, :].mean(axis=(-2, -1))
        k = sigma_b**2 + sigma_w**2 * e
        if diagonal:
            vr = vc = k
        else:
            vr, vc = var[0][:, None], var[1][None, :]
        if self.last:
            return k, k if diagonal else None
        return act.expectation(k, vr, vc), k if diagonal else None


def _offsets(radius: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


def _shift(v: np.ndarray, dy: int, dx: int, fill: float = 0.0) -> np.ndarray:
    """out[..., i, j] = v[..., i + dy, j + dx] where that pixel exists, else ``fill``."""
    h, w = v.shape[-2:]
    out = np.full_like(v, fill)
    if abs(dy) < h and abs(dx) < w:
        out[..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
            v[..., max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def _valid(h: int, w: int, radius: int) -> np.ndarray:
    """(nD, H, W) bool: pixel q + D exists, for each offset D of the box."""
    one = np.ones((h, w))
    return np.stack([_shift(one, dy, dx) for dy, dx in _offsets(radius)]) > 0


class Conv(Layer):
    """Conv layer: weight (C_out, C_in, k, k), fan_in = C_in k^2, 'same' padding, stride 1, then
    the activation and ``pool`` ('max' | 'avg' | 'none', 2x2)."""

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x  # (M, C, H, W)

    def positions(self, in_shape):
        return in_shape[-2] * in_shape[-1]

    def out_shape(self, in_shape):
        h, w = in_shape[-2:]
        return (self.weight_shape[0], h // 2, w // 2) if self.pool != "none" else (self.weight_shape[0], h, w)

    def forward(self, h, w, b, act, *, shared, out=None):
        import torch.nn.functional as F

        batch, co = w.shape[0], w.shape[1]
        z = F.conv2d(h, w.reshape(batch * co, *w.shape[2:]), None if b is None else b.reshape(batch * co),
                     padding=w.shape[-1] // 2, groups=1 if shared else batch)
        z = self._act(z, act, out is not None)
        if self.pool == "max":
            z = F.max_pool2d(z, 2)
        elif self.pool == "avg":
            z = F.avg_pool2d(z, 2)
        return z

    # NNGP: moments of pairs are (R, M, nD, H, W) (or (M, nD, H, W) on the diagonal)
    def nngp_unsupported(self) -> str:
        if self.pool == "max":
            return ("architecture.pool = 'max': max pooling has no closed-form NNGP kernel (E[max . max] of "
                    "Gaussians); use pool 'avg' or 'none', or kernel='empirical'")
        return ""

    def input_radius(self, radius: int) -> int:
        return 2 * radius + 1 if self.pool == "avg" else radius

    def input_moments(self, xr, xc, diagonal, radius):
        c, h, w = xr.shape[1:]
        radius = min(radius, max(h, w) - 1)
        out = []
        for dy, dx in _offsets(radius):
            xs = _shift(xc, dy, dx)
            out.append(np.einsum("acij,acij->aij", xr, xs) if diagonal else np.einsum("acij,bcij->abij", xr, xs))
        return np.stack(out, axis=-3) / c

    def nngp(self, e, act, sigma_w, sigma_b, diagonal, var, radius):
        k = self.weight_shape[-1]
        p = k // 2
        r_in = (math.isqrt(e.shape[-3]) - 1) // 2
        h, w = e.shape[-2:]
        pad = [(0, 0)] * (e.ndim - 2) + [(p, p), (p, p)]
        ep = np.pad(e, pad)
        s = sum(ep[..., i:i + h, j:j + w] for i in range(k) for j in range(k))
        kk = sigma_b**2 + (sigma_w**2 / (k * k)) * s  # (..., nD, H, W): offsets kept
        center = (2 * r_in + 1) * r_in + r_in
        if diagonal:
            v = kk[..., center, :, :]  # (M, H, W)
            vr, vcol = v, v
        else:
            vr, vcol = var
        offs = _offsets(r_in)
        vc = np.stack([_shift(vcol, dy, dx, 1.0) for dy, dx in offs], axis=-3)  # variance at q + D
        if diagonal:
            vr_b, vc_b = vr[:, None], vc
        else:
            vr_b, vc_b = vr[:, None, None], vc[None]
        if self.last:
            return kk, (kk[..., center, :, :] if diagonal else None)
        ex = act.expectation(kk, vr_b, vc_b) * _valid(h, w, r_in)
        if self.pool == "avg":
            ex = self._avg_pool(ex, r_in, radius)
        return ex, (kk[..., center, :, :] if diagonal else None)

    @staticmethod
    def _avg_pool(e: np.ndarray, r_in: int, radius: int) -> np.ndarray:
        h, w = e.shape[-2] // 2, e.shape[-1] // 2
        radius = min(radius, max(h, w) - 1)
        side = 2 * r_in + 1
        out = []
        for dy, dx in _offsets(radius):
            acc = 0.0
            for ay in (0, 1):
                for ax in (0, 1):
                    for by in (0, 1):
                        for bx in (0, 1):
                            oy, ox = 2 * dy + by - ay, 2 * dx + bx - ax
                            if abs(oy) > r_in or abs(ox) > r_in:
                                continue  # the pixel pair is farther apart than the image: no entry
                            acc = acc + e[..., (oy + r_in) * side + (ox + r_in), ay:ay + 2 * h:2, ax:ax + 2 * w:2]
            out.append(acc / 16.0 if not isinstance(acc, float) else np.zeros(e.shape[:-3] + (h, w)))
        return np.stack(out, axis=-3) * _valid(h, w, radius)


KINDS: dict[str, type[Layer]] = {"dense": Dense, "conv": Conv}
"""The layer kinds, by the name ``Layer.kind`` carries."""


def of_weight(w: torch.Tensor, index: int = 0, last: bool = False) -> Layer:
    """The layer of one network's weight tensor (dense: 2-D, conv: 4-D), for code that has
    parameters but no spec (``volume.reparam``)."""
    if w.dim() == 2:
        return Dense("dense", tuple(w.shape), int(w.shape[1]), last=last)
    if w.dim() == 4:
        return Conv("conv", tuple(w.shape), int(math.prod(w.shape[1:])), last=last)
    raise ValueError(f"weight{index} has {w.dim()} dimensions: a dense weight has 2, a conv weight 4")


# ---- a network ----------------------------------------------------------------------------
def layer_shapes(spec, input_shape: tuple[int, ...]) -> list[Layer]:
    """The layers of ``spec.architecture`` on inputs of ``input_shape``: FCN, dense layers; CNN,
    conv layers (pooling only where the image is at least 2x2), then dense layers; the last
    layer has ``spec.output.units`` outputs and no activation."""
    from volume.spec import FCN

    arch = spec.architecture
    units = spec.output.units
    layers: list[Layer] = []
    if isinstance(arch, FCN):
        d = math.prod(input_shape)
    else:
        c, h, w = input_shape
        k = arch.kernel_size
        for ch in arch.channels:
            pool = arch.pool if (arch.pool != "none" and h >= 2 and w >= 2) else "none"
            layers.append(Conv("conv", (ch, c, k, k), c * k * k, pool=pool))
            c = ch
            if pool != "none":
                h, w = h // 2, w // 2
        d = c * h * w
    widths = list(arch.hidden if isinstance(arch, FCN) else arch.dense) + [units]
    for i, wd in enumerate(widths):
        layers.append(Dense("dense", (wd, d), d, last=i == len(widths) - 1))
        d = wd
    return layers


def run(layers: list[Layer], params: Iterable[tuple[torch.Tensor, torch.Tensor | None]], x: torch.Tensor,
        act: Activation, buffers: list[torch.Tensor] | None = None, prepared: bool = False) -> torch.Tensor:
    """The forward of a network for B draws: ``params`` yields (weight (B, ...), bias (B, out) or
    None) per layer; ``x`` the inputs (M, *input_shape), or ``layers[0].inputs(x)`` if
    ``prepared``. ``buffers[i]`` (B, units_i, M), where given, receives dense layer i's output
    (activation in place). Returns the last layer's activations in its kind's layout."""
    h = x if prepared else layers[0].inputs(x)
    for i, (layer, (w, b)) in enumerate(zip(layers, params)):
        out = None
        if buffers is not None and buffers[i] is not None:
            out = buffers[i][:w.shape[0]]
        h = layer.forward(h, w, b, act, shared=i == 0, out=out)
    return h


def features(h: torch.Tensor, batch: int) -> torch.Tensor:
    """Activations in a layer's layout -> (B, M, features) (conv: flattened channel-major)."""
    if h.dim() == 4:
        return h.reshape(h.shape[0], batch, -1).transpose(0, 1)
    return h.transpose(1, 2)


def radii(layers: list[Layer]) -> list[int]:
    """Offsets (box radius) of each layer's output moments that the kernel chain needs: the
    readout needs offset 0; each layer asks its predecessor for ``input_radius``."""
    out = [0] * len(layers)
    for i in range(len(layers) - 2, -1, -1):
        out[i] = layers[i + 1].input_radius(out[i + 1])
    return out


def nngp_chain(layers: list[Layer], xr: np.ndarray, xc: np.ndarray, act: Activation, sigma_w: float,
               sigma_b: float, diagonal: bool, variances: list | None = None) -> tuple[np.ndarray, list]:
    """Output covariance of the pairs of inputs of ``xr`` and ``xc`` (float64 (R, *input_shape),
    (M, *input_shape)): (R, M), or (M,) for the pairs (x, x) when ``diagonal`` (then xr is xc).
    Returns it and the per-layer pre-activation variances (diagonal pass); the off-diagonal pass
    takes ``variances`` = [(rows, columns) per layer] from it."""
    rad = radii(layers)
    e = layers[0].input_moments(xr, xc, diagonal, layers[0].input_radius(rad[0]))
    used = []
    for i, layer in enumerate(layers):
        e, v = layer.nngp(e, act, sigma_w, sigma_b, diagonal, None if diagonal else variances[i], rad[i])
        used.append(v)
    return e, used


def walk(layers: list[Layer], input_shape: tuple[int, ...]) -> list[tuple[Layer, tuple[int, ...]]]:
    """(layer, shape of one input's activations entering it) along the network."""
    out, shape = [], tuple(input_shape)
    for layer in layers:
        out.append((layer, shape))
        shape = layer.out_shape(shape)
    return out


def pair_elements(layers: list[Layer], input_shape: tuple[int, ...]) -> int:
    """Largest number of moments one pair of inputs holds along the kernel chain (for memory
    budgeting): 1 for dense layers, (2r + 1)^2 H W for a conv layer on H x W pixels."""
    rad = radii(layers)
    size = 1
    for i, (layer, shape) in enumerate(walk(layers, input_shape)):
        if isinstance(layer, Conv):
            r = min(layer.input_radius(rad[i]), max(shape[-2:]) - 1)
            size = max(size, (2 * r + 1) ** 2 * layer.positions(shape))
    return size
