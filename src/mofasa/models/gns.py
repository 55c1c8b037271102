"""GNS backbone: local message passing + a global node, shared by encoder, decoder and denoiser.

One layer of :class:`GNS` updates atom states ``h`` (B, N, D) and the global node ``g`` (B, D):

(a) **local step**, pre-norm residual, either
    * ``local="knn"``: messages over a sparse periodic graph given as ``edge_index`` into the
      flattened ``B * N`` atoms plus per-edge features (e.g. RBF of distances). Edge states are
      updated from both end atoms, then summed into their centre atom with ``index_add_`` and
      divided by the degree (a graph-network / GNS interaction block); or
    * ``local="dense"``: multi-head attention over all pairs through
      :func:`torch.nn.functional.scaled_dot_product_attention` with a key-padding mask. Pair
      information may enter only as an additive ``(B, heads, N, N)`` logit bias or as low-rank
      factors ``u_i . v_j`` (concatenated to queries / keys), so no ``(B, N, N, D)`` tensor
      is ever built: feature memory is linear in N.

(b) **global step**: the global node reads all atoms (masked multi-head attention pooling, whose
    keys include the global node itself, or a masked mean), together with an optional per-crystal
    context vector (e.g. lattice features) and updates itself with an MLP; every atom then runs an
    MLP of ``[its state, the new global state]`` (the per-atom feed-forward block), so atoms and
    the global node are updated together.

All residual branches are pre-norm. An optional conditioning vector ``cond`` (B, C) (e.g. the
diffusion time embedding) modulates every normalisation with adaLN (shift, scale, gate). Padding
atoms are excluded from attention keys, pooling and graphs, and their states are zeroed after
each layer, so they never influence real atoms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mofasa.models.config import BackboneConfig

__all__ = ["GNS", "GNSLayer", "GlobalPool", "GraphMessagePassing", "MultiHeadAttention", "attend"]


def _zero_(layer: nn.Linear) -> nn.Linear:
    # Zero output layers make each residual branch start as the identity (and adaLN start
    # neutral): deep stacks then train stably from the first step (adaLN-Zero, DiT).
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _modulate(
    x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor | None
) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with (B, D) modulations broadcast over atoms."""
    if shift is None or scale is None:
        return x
    if x.dim() == 3:
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)  # (B, 1, D)
    return x * (1.0 + scale) + shift  # like x


def _gate(x: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """Residual-branch gate ``x * (1 + gate)`` (identity without conditioning)."""
    if gate is None:
        return x
    if x.dim() == 3:
        gate = gate.unsqueeze(1)  # (B, 1, D)
    return x * (1.0 + gate)  # like x


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    factors: tuple[torch.Tensor, torch.Tensor] | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Masked multi-head attention through ``scaled_dot_product_attention``.

    Computes ``softmax(q.k / sqrt(d) + bias + u.v, masked over keys) @ v`` without building any
    tensor larger than the (B, heads, N_q, N_k) logits (which SDPA's fused kernels avoid too).

    Args:
        q: (B, H, Nq, d) queries.
        k: (B, H, Nk, d) keys.
        v: (B, H, Nk, dv) values.
        key_mask: (B, Nk) bool, True for keys that may be attended to. A crystal with no real
            key attends to all keys instead (finite output rather than NaN).
        bias: optional (B, H, Nq, Nk) additive logit bias (pair terms).
        factors: optional low-rank pair terms ``(u, w)``, (B, H, Nq, r) and (B, H, Nk, r); adds
            ``u_i . w_j`` to the logits by concatenating them to queries and keys.
        dropout_p: attention dropout probability.

    Returns:
        (B, H, Nq, dv) attention output.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])  # python float
    if factors is not None:
        u, w = factors  # (B, H, Nq, r), (B, H, Nk, r)
        q = torch.cat([q, u.to(q.dtype) / scale], dim=-1)  # (B, H, Nq, d + r)
        k = torch.cat([k, w.to(k.dtype)], dim=-1)  # (B, H, Nk, d + r)
    key_mask = key_mask | ~key_mask.any(dim=-1, keepdim=True)  # (B, Nk)
    allowed = key_mask[:, None, None, :]  # (B, 1, 1, Nk)
    attn_mask = (
        allowed if bias is None else bias.to(q.dtype).masked_fill(~allowed, float("-inf"))
    )  # (B, 1, 1, Nk) bool or (B, H, Nq, Nk) float
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale
    )  # (B, H, Nq, dv)


class MultiHeadAttention(nn.Module):
    """All-pairs self-attention over atoms (the dense local step).

    Args:
        width: feature width D.
        heads: number of heads H (divides D).
        dropout: attention-weight dropout.
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = _zero_(nn.Linear(width, width))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        bias: torch.Tensor | None = None,
        factors: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend over all real atoms.

        Args:
            x: (B, N, D) normalised atom states.
            mask: (B, N) bool, True for real atoms.
            bias: optional (B, H, N, N) logit bias.
            factors: optional low-rank pair factors, each (B, H, N, r).

        Returns:
            (B, N, D) update.
        """
        B, N, D = x.shape  # batch, atoms, width
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads)  # (B, N, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, d)
        p = self.dropout if self.training else 0.0  # python float
        o = attend(q, k, v, mask, bias=bias, factors=factors, dropout_p=p)  # (B, H, N, d)
        return self.out(o.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


class GraphMessagePassing(nn.Module):
    """Sparse local step: edge update from both end atoms, degree-normalised sum at the centre.

    ``e_ij <- e_ij + W_o silu(LN(e_ij) + W_d x_i + W_s x_j)``, then
    ``update_i = W_out silu(W_in x_i + W_m mean_j e_ij)``.

    Args:
        width: feature width D of atoms and edges.
        hidden: hidden width of the node MLP.
    """

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.edge_norm = nn.LayerNorm(width)
        self.edge_src = nn.Linear(width, width, bias=False)
        self.edge_dst = nn.Linear(width, width, bias=False)
        self.edge_out = _zero_(nn.Linear(width, width))
        self.node_in = nn.Linear(width, hidden)
        self.node_msg = nn.Linear(width, hidden, bias=False)
        self.node_out = _zero_(nn.Linear(hidden, width))

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, edges: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One message-passing step.

        Args:
            x: (B, N, D) normalised atom states.
            edge_index: (2, E) int64 into the flattened B * N atoms; row 0 = centre i (receives),
                row 1 = neighbour j (sends).
            edges: (E, D) edge states.

        Returns:
            ``(update, edges)``: (B, N, D) atom update and (E, D) updated edge states.
        """
        B, N, D = x.shape  # batch, atoms, width
        flat = x.reshape(B * N, D)  # (B*N, D)
        i, j = edge_index[0], edge_index[1]  # (E,), (E,)
        # one (E, D) x (D, D) product per edge and layer (edge_out); the end-atom terms are
        # projected per atom and gathered, which is E / (B N) = k times cheaper
        pre = self.edge_norm(edges) + self.edge_dst(flat)[i] + self.edge_src(flat)[j]  # (E, D)
        edges = edges + self.edge_out(F.silu(pre))  # (E, D)
        acc = torch.promote_types(edges.dtype, torch.float32)  # accumulate >= fp32 (autocast)
        agg = torch.zeros(B * N, D, dtype=acc, device=x.device)  # (B*N, D)
        agg = agg.index_add(0, i, edges.to(acc))  # (B*N, D) sum of incoming edge states
        deg = torch.zeros(B * N, dtype=acc, device=x.device)  # (B*N,)
        deg = deg.index_add(0, i, torch.ones_like(i, dtype=acc))  # (B*N,)
        agg = (agg / deg.clamp(min=1.0).unsqueeze(-1)).view(B, N, D)  # (B, N, D) mean message
        a = self.node_in(x) + self.node_msg(agg.to(x.dtype))  # (B, N, hidden)
        return self.node_out(F.silu(a)), edges  # (B, N, D), (E, D)


class GlobalPool(nn.Module):
    """The global node gathers the atoms: masked multi-head attention pooling or masked mean.

    Args:
        width: feature width D.
        heads: attention heads.
        kind: ``"attention"`` or ``"mean"``.
    """

    def __init__(self, width: int, heads: int, kind: str = "attention") -> None:
        super().__init__()
        self.kind = kind
        self.heads = heads
        if kind == "attention":
            self.q = nn.Linear(width, width)
            self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, g: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool atoms into one vector per crystal.

        Args:
            g: (B, D) normalised global state (the query; also a key, so never empty).
            x: (B, N, D) normalised atom states.
            mask: (B, N) bool, True for real atoms.

        Returns:
            (B, D) pooled summary.
        """
        B, N, D = x.shape  # batch, atoms, width
        if self.kind == "mean":
            m = mask.unsqueeze(-1).to(x.dtype)  # (B, N, 1)
            mean = (x * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)
            return self.out(mean)  # (B, D)
        H, d = self.heads, D // self.heads  # ints
        keys = torch.cat([g.unsqueeze(1), x], dim=1)  # (B, 1 + N, D)
        key_mask = torch.cat([mask.new_ones(B, 1), mask], dim=1)  # (B, 1 + N)
        q = self.q(g).view(B, 1, H, d).transpose(1, 2)  # (B, H, 1, d)
        k, v = self.kv(keys).view(B, N + 1, 2, H, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B,H,1+N,d)
        o = attend(q, k, v, key_mask)  # (B, H, 1, d)
        return self.out(o.reshape(B, D))  # (B, D)


class GNSLayer(nn.Module):
    """Local step + global step (see module docstring).

    Args:
        config: backbone hyper-parameters.
        cond_dim: width of the conditioning vector (0: none).
        context_dim: width of the per-crystal context fed to the global update (0: none).
    """

    _NUM_MOD = 9  # (shift, scale, gate) x (local, global node, atom MLP)

    def __init__(self, config: BackboneConfig, cond_dim: int = 0, context_dim: int = 0) -> None:
        super().__init__()
        D, hidden = config.width, config.hidden
        self.local_kind = config.local
        self.norm_local = nn.LayerNorm(D)
        if config.local == "dense":
            self.attn = MultiHeadAttention(D, config.heads, config.attn_dropout)
        else:
            self.mp = GraphMessagePassing(D, hidden)
        self.norm_atoms = nn.LayerNorm(D)
        self.norm_g = nn.LayerNorm(D)
        self.pool = GlobalPool(D, config.heads, config.global_pool)
        # one vector per crystal: width D suffices for its MLP (FLOP-free, parameter-heavy)
        self.g_in = nn.Linear(2 * D + context_dim, D)
        self.g_out = _zero_(nn.Linear(D, D))
        self.norm_ffn = nn.LayerNorm(D)
        self.norm_g_ffn = nn.LayerNorm(D)
        self.ffn_in = nn.Linear(D, hidden)
        self.ffn_g = nn.Linear(D, hidden, bias=False)
        self.ffn_out = _zero_(nn.Linear(hidden, D))
        self.drop = nn.Dropout(config.dropout)
        self.modulation = _zero_(nn.Linear(cond_dim, self._NUM_MOD * D)) if cond_dim else None

    def forward(
        self,
        h: torch.Tensor,
        g: torch.Tensor,
        mask: torch.Tensor,
        *,
        edge_index: torch.Tensor | None = None,
        edges: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        pair_factors: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Update atoms, global node (and edges).

        Args:
            h: (B, N, D) atom states.
            g: (B, D) global node.
            mask: (B, N) bool, True for real atoms.
            edge_index: (2, E) graph into flattened atoms (``knn`` only).
            edges: (E, D) edge states (``knn`` only).
            cond: (B, C) conditioning vector or None.
            context: (B, K) per-crystal context for the global update or None.
            attn_bias: (B, H, N, N) logit bias (``dense`` only) or None.
            pair_factors: low-rank pair factors (``dense`` only) or None.

        Returns:
            ``(h, g, edges)`` with the same shapes (edges None for ``dense``).
        """
        m = mask.unsqueeze(-1).to(h.dtype)  # (B, N, 1)
        if self.modulation is not None and cond is not None:
            mods = list(self.modulation(F.silu(cond)).chunk(self._NUM_MOD, dim=-1))  # 9 x (B, D)
        else:
            mods = [None] * self._NUM_MOD  # no conditioning
        # (a) local step
        x = _modulate(self.norm_local(h), mods[0], mods[1])  # (B, N, D)
        if self.local_kind == "dense":
            upd = self.attn(x, mask, attn_bias, pair_factors)  # (B, N, D)
        else:
            if edge_index is None or edges is None:
                raise ValueError("a knn backbone needs edge_index and edges")
            upd, edges = self.mp(x, edge_index, edges)  # (B, N, D), (E, D)
        h = h + _gate(self.drop(upd), mods[2])  # (B, N, D)
        # (b) global step: gather atoms (+ context) into the global node ...
        gx = _modulate(self.norm_g(g), mods[3], mods[4])  # (B, D)
        pooled = self.pool(gx, self.norm_atoms(h), mask)  # (B, D)
        parts = [gx, pooled] if context is None else [gx, pooled, context.to(gx.dtype)]  # list
        gu = self.g_out(F.silu(self.g_in(torch.cat(parts, dim=-1))))  # (B, D)
        g = g + _gate(self.drop(gu), mods[5])  # (B, D)
        # ... and broadcast it back: per-atom MLP of [atom state, new global state]
        x = _modulate(self.norm_ffn(h), mods[6], mods[7])  # (B, N, D)
        a = self.ffn_in(x) + self.ffn_g(self.norm_g_ffn(g)).unsqueeze(1)  # (B, N, hidden)
        h = h + _gate(self.drop(self.ffn_out(F.silu(a))), mods[8])  # (B, N, D)
        return h * m, g, edges  # (B, N, D), (B, D), (E, D) | None


class GNS(nn.Module):
    """A stack of :class:`GNSLayer` with final layer norms.

    The caller embeds its inputs to width D; for ``local="knn"`` it also passes raw edge
    features (E, edge_dim), embedded here by an MLP.

    Args:
        config: backbone hyper-parameters.
        edge_dim: width of raw edge features (``knn``; ignored for ``dense``).
        cond_dim: width of the conditioning vector (0: none).
        context_dim: width of the per-crystal context (0: none).
    """

    def __init__(
        self,
        config: BackboneConfig,
        *,
        edge_dim: int = 0,
        cond_dim: int = 0,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        self.config = config
        D = config.width
        if config.local == "knn":
            if edge_dim < 1:
                raise ValueError("a knn backbone needs edge_dim >= 1")
            self.edge_embed = nn.Sequential(nn.Linear(edge_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.layers = nn.ModuleList(
            GNSLayer(config, cond_dim=cond_dim, context_dim=context_dim)
            for _ in range(config.depth)
        )
        self.norm_h = nn.LayerNorm(D)
        self.norm_g = nn.LayerNorm(D)

    def forward(
        self,
        h: torch.Tensor,
        g: torch.Tensor,
        mask: torch.Tensor,
        *,
        edge_index: torch.Tensor | None = None,
        edge_attr: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        pair_factors: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run all layers.

        Args:
            h: (B, N, D) embedded atoms (padding rows arbitrary; zeroed here).
            g: (B, D) embedded global node.
            mask: (B, N) bool, True for real atoms.
            edge_index: (2, E) int64 into the flattened B * N atoms (``knn``).
            edge_attr: (E, edge_dim) raw edge features (``knn``).
            cond: (B, C) conditioning vector (adaLN) or None.
            context: (B, K) per-crystal context for every global update or None.
            attn_bias: (B, H, N, N) additive attention-logit bias (``dense``) or None.
            pair_factors: ``(u, w)`` low-rank pair factors, each (B, H, N, r) (``dense``).

        Returns:
            ``(h, g)``: (B, N, D) atoms (zeros at padding) and (B, D) global node, normalised.
        """
        h = h * mask.unsqueeze(-1).to(h.dtype)  # (B, N, D)
        edges = None  # dense: no edge states
        if self.config.local == "knn":
            if edge_index is None or edge_attr is None:
                raise ValueError("a knn backbone needs edge_index and edge_attr")
            edges = self.edge_embed(edge_attr.to(h.dtype))  # (E, D)
        for layer in self.layers:
            h, g, edges = layer(
                h,
                g,
                mask,
                edge_index=edge_index,
                edges=edges,
                cond=cond,
                context=context,
                attn_bias=attn_bias,
                pair_factors=pair_factors,
            )  # (B, N, D), (B, D), (E, D) | None
        h = self.norm_h(h) * mask.unsqueeze(-1).to(h.dtype)  # (B, N, D)
        return h, self.norm_g(g)  # (B, N, D), (B, D)
