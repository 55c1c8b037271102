"""`CoordDenoiser`: velocities for explicit fractional coordinates, type codes and the lattice.

The hybrid of the bake-off (arm c): no autoencoder for positions. Per atom the state is its
fractional coordinates on the torus and a small continuous type code (analog bits); per crystal
the 6 normalised lattice numbers. The network is the GNS backbone twice: a local step over the
periodic k-NN graph of the *noisy* coordinates (edge features: distance RBF), then all-pairs
attention with the pair terms of arm b (relative Fourier features of the minimum-image
displacement + distance RBF, `models.pair_terms.PairBias`), computed once per forward. The
coordinate velocity is a learned weighted sum of the k-NN edge displacements (fractional,
periodic, translation-invariant by construction); types and lattice get linear heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from mofasa.data.batch import CrystalBatch
from mofasa.data.conditions import HOP_BONDED
from mofasa.geometry.graphs import (
    PeriodicGraph,
    knn_graph_pbc_dense_batch,
    nearest_image_graph_batch,
)
from mofasa.geometry.lattice_torch import lattice_from_parameters_torch, min_image_frac_torch
from mofasa.models.autoencoder import GaussianRBF
from mofasa.models.config import BackboneConfig
from mofasa.models.denoiser import timestep_embedding
from mofasa.models.gns import GNS
from mofasa.models.pair_terms import PairBias

__all__ = ["CoordDenoiser", "CoordDenoiserConfig", "LatticeCoder", "type_codes"]


@dataclass(frozen=True)
class CoordDenoiserConfig:
    """Hyper-parameters of `CoordDenoiser`.

    Attributes:
        local: k-NN message-passing stack over the noisy coordinates.
        dense: all-pairs attention stack with pair terms (depth 0: none).
        knn_k: neighbours per atom.
        rbf_size, rbf_cutoff: distance Gaussians of the edges and pairs (Å).
        type_bits: width of the analog-bit type code (2^bits >= the 101 tokens).
        time_embed_dim: sinusoidal time features.
        pair_frequencies: Fourier frequencies of the pair terms.
        conditional: take conditions (allowed elements per atom, per-crystal features, bond
            hop classes, kept atoms); see `mofasa.diffusion.conditions`.
        condition_features: width of the per-crystal condition features.
        hop_classes: number of bond-graph distance classes (0: none given).
        bond_edges: given bonds (hop class 2) also become edges of the local step, to the
            nearest image of the partner at the current noisy positions, so that an atom can
            move toward a bonded partner outside its k nearest neighbours (the coordinate
            velocity is a sum over edges; without them a bond condition can only bias
            attention, whose values carry no displacement).
        order_features: add features of each atom's place in the canonical order (index i,
            i / N, and N - 1 - i, sinusoidal, through a zero-initialised linear map: a warm
            start keeps the old function). The order sorts atoms by element (metals first,
            H last), so the index says which element an atom is likely to be; without it the
            network is permutation-equivariant and one sample in four came out with no metal.
        self_condition: take the model's previous clean-coordinate estimate as input (Chen et
            al. 2022, "Analog bits": self-conditioning): its pair distances enter the k-NN
            edge features and a second attention bias, its displacement from the noisy
            coordinates the atom states; all through zero-initialised maps, so a warm start
            keeps the old function. Without an estimate (``self_cond=None``) those terms are
            absent.
    """

    local: BackboneConfig = field(
        default_factory=lambda: BackboneConfig(width=128, depth=4, heads=4, local="knn"))
    dense: BackboneConfig = field(
        default_factory=lambda: BackboneConfig(width=128, depth=2, heads=4, local="dense"))
    knn_k: int = 16
    rbf_size: int = 32
    rbf_cutoff: float = 8.0
    type_bits: int = 7
    time_embed_dim: int = 128
    pair_frequencies: int = 4
    conditional: bool = False
    condition_features: int = 206
    hop_classes: int = 6
    bond_edges: bool = False
    order_features: bool = False
    self_condition: bool = False

    def __post_init__(self) -> None:
        if self.local.local != "knn" or self.dense.local != "dense":
            raise ValueError("CoordDenoiser needs a knn local stack and a dense stack")
        if self.local.width != self.dense.width:
            raise ValueError("the two stacks must have the same width")
        if 2 ** self.type_bits < 101:
            raise ValueError("type_bits must encode the 101 tokens (>= 7)")


ORDER_DIM = 64  # sinusoidal features per order quantity


def order_features(mask: torch.Tensor) -> torch.Tensor:
    """(B, N, 3 * ORDER_DIM) features of each atom's canonical index i (real atoms first):
    sinusoids of i, 1000 i / N and N - 1 - i (padding rows are arbitrary; callers mask)."""
    B, N = mask.shape
    i = torch.arange(N, device=mask.device, dtype=torch.float32).expand(B, N)  # (B, N)
    n = mask.sum(1, keepdim=True).to(torch.float32).clamp(min=1.0)  # (B, 1)
    parts = [i, 1000.0 * i / n, (n - 1.0 - i).clamp(min=0.0)]
    feats = [timestep_embedding(p.reshape(-1), ORDER_DIM).view(B, N, ORDER_DIM) for p in parts]
    return torch.cat(feats, dim=-1)


def type_codes(bits: int) -> torch.Tensor:
    """(101, bits) analog bits of tokens 0..100 in {-1, +1} (token 0, padding, included)."""
    tokens = torch.arange(101).unsqueeze(-1)  # (101, 1)
    return ((tokens >> torch.arange(bits)) & 1).float() * 2.0 - 1.0  # (101, bits)


class LatticeCoder:
    """Lattice <-> 6 normalised numbers: (log(length / N^(1/3)) - mean) / std and
    (angle - 90 deg) / 15 deg; ``mean`` / ``std`` come from the training data."""

    def __init__(self, log_len_mean: float = 0.87, log_len_std: float = 0.25) -> None:
        self.mean, self.std = log_len_mean, log_len_std

    def encode(self, lattice: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
        """(B, 3, 3), (B,) -> (B, 6)."""
        from mofasa.geometry.lattice_torch import scaled_lattice_parameters_torch

        log_len, _, angles = scaled_lattice_parameters_torch(lattice, num_atoms)  # (B, 3) x 2
        return torch.cat([(log_len - self.mean) / self.std, (angles - 90.0) / 15.0], dim=-1)

    def decode(self, code: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
        """(B, 6), (B,) -> (B, 3, 3); angles clamped into (60, 120) deg, lengths to sane."""
        n = num_atoms.to(code.dtype).clamp(min=1.0).unsqueeze(-1)  # (B, 1)
        log_len = (code[:, :3] * self.std + self.mean).clamp(-2.0, 3.0)  # (B, 3)
        angles = (code[:, 3:] * 15.0 + 90.0).clamp(60.5, 119.5)  # (B, 3)
        return lattice_from_parameters_torch(log_len.exp() * n.pow(1.0 / 3.0), angles)


class CoordDenoiser(nn.Module):
    """Predictions ``(d_frac (B, N, 3), type code (B, N, bits), lattice code (B, 6))`` at time
    t: the fractional displacement from the noisy to the clean coordinates (a weighted sum of
    edge displacements), and the clean type and lattice codes.

    Args:
        config: hyper-parameters.
    """

    def __init__(self, config: CoordDenoiserConfig) -> None:
        super().__init__()
        c = self.config = config
        D = c.local.width
        self.rbf = GaussianRBF(c.rbf_size, c.rbf_cutoff)
        self.type_in = nn.Linear(c.type_bits, D)
        self.lattice_in = nn.Linear(6, D)
        self.time_embed = nn.Sequential(nn.Linear(c.time_embed_dim, D), nn.SiLU(),
                                        nn.Linear(D, D))
        self.local = GNS(c.local, edge_dim=c.rbf_size, cond_dim=D, context_dim=6)
        self.dense = GNS(c.dense, cond_dim=D, context_dim=6) if c.dense.depth else None
        self.pair_bias = PairBias(c.dense.heads, c.pair_frequencies, 16, c.rbf_cutoff) \
            if c.dense.depth else None
        # per-edge weight of the displacement toward neighbour j (the coordinate velocity):
        # an MLP of [h_i, h_j, rbf_ij] whose first layer is split per input, so the atom parts
        # are computed once per atom, not once per edge (the edges are ~k times more)
        self.edge_i = nn.Linear(D, D)
        self.edge_j = nn.Linear(D, D, bias=False)
        self.edge_rbf = nn.Linear(c.rbf_size, D, bias=False)
        self.edge_out = nn.Linear(D, 1)
        self.type_out = nn.Linear(D, c.type_bits)
        self.lattice_out = nn.Linear(D, 6)
        self.order_in = None
        if c.order_features:
            self.order_in = nn.Linear(3 * ORDER_DIM, D)
            nn.init.zeros_(self.order_in.weight)
            nn.init.zeros_(self.order_in.bias)
        if c.conditional:
            self._build_conditions(D)
        if c.self_condition:
            self._build_self_condition(D)

    def _build_self_condition(self, D: int) -> None:
        c = self.config
        self.sc_edge = nn.Linear(c.rbf_size, c.rbf_size, bias=False)
        self.sc_atom = nn.Linear(c.rbf_size, D, bias=False)
        for lin in (self.sc_edge, self.sc_atom):
            nn.init.zeros_(lin.weight)
        self.sc_pair = PairBias(c.dense.heads, c.pair_frequencies, 16, c.rbf_cutoff) \
            if c.dense.depth else None  # its last layer starts at zero

    def _build_conditions(self, D: int) -> None:
        c = self.config
        # per atom: its allowed elements (row-normalised multi-hot) and a "kept" vector
        self.allowed_in = nn.Linear(101, D, bias=False)
        self.keep_vec = nn.Parameter(torch.zeros(D))
        # per crystal: composition, present elements and flags, into the adaLN condition;
        # zero-initialised so that conditioning starts as the unconditional model
        self.cond_in = nn.Sequential(nn.Linear(c.condition_features, D), nn.SiLU(),
                                     nn.Linear(D, D))
        nn.init.zeros_(self.cond_in[2].weight)
        nn.init.zeros_(self.cond_in[2].bias)
        # bond-graph distance classes: edge features of the k-NN step and attention bias
        self.hop_edge = nn.Embedding(c.hop_classes, c.rbf_size, padding_idx=0)
        self.hop_bias = nn.Embedding(c.hop_classes, c.dense.heads, padding_idx=0)

    def forward(self, frac: torch.Tensor, types: torch.Tensor, lattice_code: torch.Tensor,
                lattice: torch.Tensor, t: torch.Tensor, mask: torch.Tensor,
                cond: dict[str, torch.Tensor] | None = None,
                self_cond: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clean-state predictions for the three parts of the state.

        Args:
            frac: (B, N, 3) noisy fractional coordinates in [0, 1).
            types: (B, N, bits) noisy type codes.
            lattice_code: (B, 6) noisy normalised lattice numbers.
            lattice: (B, 3, 3) the lattice they decode to (Å).
            t: (B,) times in [0, 1] (0: noise, 1: data).
            mask: (B, N) bool.
            cond: conditions (a conditional denoiser only; None or all zeros: none):
                ``allowed`` (B, N, 101), ``features`` (B, F), ``hops`` (B, N, N) long,
                ``keep`` (B, N) bool.
            self_cond: (B, N, 3) the previous clean fractional-coordinate estimate (a
                self-conditioning denoiser only; None: no estimate).

        Returns:
            ``(d_frac (B, N, 3), types (B, N, bits), lattice (B, 6))``, zeros at padding.
        """
        B, N, _ = frac.shape
        m = mask.unsqueeze(-1).to(frac.dtype)  # (B, N, 1)
        if self.config.conditional and cond is None:  # no condition: the all-zero condition
            cond = self.null_condition(B, N, frac.device)
        graph = knn_graph_pbc_dense_batch(frac.detach(), lattice.detach(), mask,
                                          self.config.knn_k)
        if self.config.conditional and self.config.bond_edges:
            graph = _with_bond_edges(graph, frac, lattice, cond["hops"])
        edge_attr = self.rbf(graph.distances.detach())  # (E, R)
        temb = timestep_embedding(t * 1000.0, self.config.time_embed_dim)  # (B, T) float32
        c = self.time_embed(temb.to(self.type_in.weight.dtype))  # (B, D)
        h = self.type_in(types) * m  # (B, N, D)
        if self.order_in is not None:
            h = h + self.order_in(order_features(mask).to(h.dtype)) * m
        g = self.lattice_in(lattice_code)  # (B, D)
        hops = None
        if self.config.conditional:
            h, c, edge_attr, hops = self._condition(h, c, edge_attr, graph, cond, m, N)
        if self_cond is not None and self.config.self_condition:
            h, edge_attr = self._self_condition(h, edge_attr, graph, frac, self_cond, lattice, m)
        h, g = self.local(h, g, mask, edge_index=graph.edge_index, edge_attr=edge_attr, cond=c,
                          context=lattice_code)  # (B, N, D), (B, D)
        if self.dense is not None and self.pair_bias is not None:
            bias = self.pair_bias(frac, lattice).to(h.dtype)  # (B, H, N, N), once per forward
            if hops is not None:
                bias = bias + self.hop_bias(hops).permute(0, 3, 1, 2).to(h.dtype)
            if self_cond is not None and self.sc_pair is not None:
                bias = bias + self.sc_pair(self_cond.detach(), lattice).to(h.dtype)
            h, g = self.dense(h, g, mask, cond=c, context=lattice_code, attn_bias=bias)
        v_frac = self._coordinate_velocity(h, graph, edge_attr, frac, B, N) * m  # (B, N, 3)
        return v_frac, self.type_out(h) * m, self.lattice_out(g)

    def null_condition(self, batch_size: int, n: int, device: torch.device
                       ) -> dict[str, torch.Tensor]:
        """The all-zero condition (what unconditional rows train with)."""
        return {"allowed": torch.zeros(batch_size, n, 101, device=device),
                "features": torch.zeros(batch_size, self.config.condition_features,
                                        device=device),
                "hops": torch.zeros(batch_size, n, n, dtype=torch.long, device=device),
                "keep": torch.zeros(batch_size, n, dtype=torch.bool, device=device)}

    def _condition(self, h: torch.Tensor, c: torch.Tensor, edge_attr: torch.Tensor,
                   graph: object, cond: dict[str, torch.Tensor], m: torch.Tensor, N: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Add the conditions to the atom states, the adaLN vector and the edge features."""
        allowed = cond["allowed"].to(h.dtype)  # (B, N, 101)
        allowed = allowed / allowed.sum(-1, keepdim=True).clamp(min=1.0)
        keep = cond["keep"].unsqueeze(-1).to(h.dtype)  # (B, N, 1)
        h = h + (self.allowed_in(allowed) + keep * self.keep_vec) * m  # (B, N, D)
        c = c + self.cond_in(cond["features"].to(c.dtype))  # (B, D)
        hops = cond["hops"]  # (B, N, N)
        i, j = graph.edge_index  # (E,) into B * N
        edge_attr = edge_attr + self.hop_edge(hops.flatten()[i * N + j % N]).to(edge_attr.dtype)
        return h, c, edge_attr, hops

    def _self_condition(self, h: torch.Tensor, edge_attr: torch.Tensor, graph: object,
                        frac: torch.Tensor, est: torch.Tensor, lattice: torch.Tensor,
                        m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the estimate's edge distances to the edge features and its displacement from
        the noisy coordinates to the atom states (both as Gaussians of Å)."""
        B, N, _ = frac.shape
        est = est.detach()
        i, j = graph.edge_index  # (E,) into B * N
        flat = est.reshape(B * N, 3)
        d_ij = min_image_frac_torch(flat[j] - flat[i])  # (E, 3): the estimate's nearest image
        lat_e = lattice.detach().repeat_interleave(N, dim=0)[i]  # (E, 3, 3)
        dist = (d_ij.unsqueeze(-2) @ lat_e).squeeze(-2).norm(dim=-1)  # (E,) Å
        edge_attr = edge_attr + self.sc_edge(self.rbf(dist).to(edge_attr.dtype))
        move = min_image_frac_torch(est - frac.detach())  # (B, N, 3)
        step = (move.unsqueeze(-2) @ lattice.detach().unsqueeze(1)).squeeze(-2).norm(dim=-1)
        h = h + self.sc_atom(self.rbf(step.reshape(-1)).view(B, N, -1).to(h.dtype)) * m
        return h, edge_attr

    def _coordinate_velocity(self, h: torch.Tensor, graph: object, edge_attr: torch.Tensor,
                             frac: torch.Tensor, B: int, N: int) -> torch.Tensor:
        """sum_j w_ij (x_j + n_ij - x_i): a periodic, translation-invariant velocity."""
        i, j = graph.edge_index  # (E,) x 2 into B * N
        flat = h.reshape(B * N, -1)  # (B N, D)
        hidden = self.edge_i(flat)[i] + self.edge_j(flat)[j] + self.edge_rbf(edge_attr)  # (E, D)
        w = self.edge_out(torch.nn.functional.silu(hidden))  # (E, 1)
        x = frac.reshape(B * N, 3).detach()  # (B N, 3)
        d_frac = x[j] + graph.offsets.to(x.dtype) - x[i]  # (E, 3): toward the image of j
        v = torch.zeros(B * N, 3, dtype=h.dtype, device=h.device)
        v.index_add_(0, i, w * d_frac.to(h.dtype))  # (B N, 3)
        return v.view(B, N, 3) / math.sqrt(self.config.knn_k)


def _with_bond_edges(graph: PeriodicGraph, frac: torch.Tensor, lattice: torch.Tensor,
                     hops: torch.Tensor) -> PeriodicGraph:
    """The k-NN graph plus one edge per given bond (hop class 2: bonded), i -> nearest image
    of j; a bond already among the k nearest then appears twice (a second, own weight)."""
    b, i, j = (hops == HOP_BONDED).nonzero(as_tuple=True)  # (E_b,) x 3
    if not len(b):
        return graph
    bonds = nearest_image_graph_batch(frac, lattice, b, i, j)
    return PeriodicGraph(
        edge_index=torch.cat([graph.edge_index, bonds.edge_index], dim=1),
        offsets=torch.cat([graph.offsets, bonds.offsets]),
        vectors=torch.cat([graph.vectors, bonds.vectors.to(graph.vectors.dtype)]),
        distances=torch.cat([graph.distances, bonds.distances.to(graph.distances.dtype)]))


def batch_state(batch: CrystalBatch, codes: torch.Tensor, coder: LatticeCoder
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The clean state of a batch: (frac (B, N, 3), type codes (B, N, bits), lattice (B, 6))."""
    types = codes.to(batch.frac.device)[batch.atom_types] * batch.mask.unsqueeze(-1)
    return batch.frac, types, coder.encode(batch.lattice, batch.num_atoms)
