"""Branches of an image's prefix packed side by side in one KV cache row.

The annotator scores the emotion labels and decodes the text fields as branches of
each image's prefix: `Tree` keeps who owns each cached token and builds the 4-D mask
that lets a branch see only the prefix, its ancestors and itself; `growing_cache`
appends in place instead of copying the cache at every step. A static tree
(`static_cache`) keeps every shape of a decoding step fixed instead, so that
`GraphedStep` can replay the step as one CUDA graph.
"""

from __future__ import annotations

import logging
from typing import Any

from artnote.errors import ModelError

log = logging.getLogger(__name__)

PREFIX, DEAD = 0, -1  # cache owners: the image prefix, and padding (seen by nobody)


class Tree:
    """Branches of each row's prefix, packed side by side in the row's own KV cache.

    Every cached token has an owner: the prefix (0), a branch (1, 2, ...) or
    nobody (DEAD: padding). A token sees, causally, the tokens of its own
    branch and of the branch's ancestors, at positions counted along that path;
    so each branch computes what it would alone after the prefix, while the
    prefix's cache exists once per image instead of once per field or label.
    """

    def __init__(self, annotator: Any, kv, mask, room: int, static: bool = False) -> None:
        """`room`: tokens per row the branches will add. `static`: the cache and the
        owners are allocated whole (prefix + room) and every forward attends over all of
        it, unused slots owned by nobody: a step's shapes never change, so a CUDA graph
        can replay it (`GraphedStep`); rows then never leave (`select` is not for it)."""
        import torch

        self.annotator = annotator
        self.static = static
        self.parents: list[int | None] = [None]
        self._table = None
        self.after = {PREFIX: mask.sum(dim=-1)}  # branch -> position after its last token
        prefix_owner = torch.where(mask.bool(), PREFIX, DEAD)
        if static:
            self.cache = static_cache(kv, room)  # a copy: the root is never changed
            self.owner = torch.full(
                (mask.shape[0], mask.shape[1] + room), DEAD, dtype=torch.long, device=mask.device
            )
            self.owner[:, : mask.shape[1]] = prefix_owner
            self.used = mask.shape[1]  # slots written so far
        else:
            self.cache = growing_cache(kv, room)  # a copy: the root is never changed
            self.owner = prefix_owner

    def new_branch(self, parent: int) -> int:
        self.parents.append(parent)
        self._table = None
        return len(self.parents) - 1

    def _sees(self, device):
        """table[a, b]: may a token of branch a see one of branch b (row/column -1: DEAD)?

        Made once per set of branches, not at every decoding step."""
        import torch

        if self._table is None:
            count = len(self.parents)
            table = torch.zeros((count + 1, count + 1), dtype=torch.bool)
            for b in range(count):
                a: int | None = b
                while a is not None:
                    table[b, a] = True
                    a = self.parents[a]
            table[DEAD, PREFIX] = True  # padding queries need something to attend to
            self._table = table.to(device)
        return self._table

    def extend(self, ids, branch: int):
        """Feed ids (rows, q), all of `branch`, right after its parent; their hidden states."""
        import torch

        start = self.after[self.parents[branch]]
        positions = start[:, None] + torch.arange(ids.shape[1], device=ids.device)
        self.after[branch] = start + ids.shape[1]
        return self.forward(ids, torch.full_like(ids, branch), positions)

    def extend_rows(self, rows_ids: list[list[int]], branch: int, pad_id: int):
        """As extend, with each row's own ids (lengths may differ): right-aligned after
        dead padding, so the last hidden state of every row is its last token's."""
        import torch

        if len({len(ids) for ids in rows_ids}) == 1:
            device = self.after[PREFIX].device
            return self.extend(torch.tensor(rows_ids, device=device), branch)
        start = self.after[self.parents[branch]]
        width = max(map(len, rows_ids))
        ids = torch.full((len(rows_ids), width), pad_id, device=start.device)
        owner = torch.full_like(ids, DEAD)
        pos = torch.zeros_like(ids)
        for r, row in enumerate(rows_ids):
            ids[r, width - len(row) :] = torch.tensor(row)
            owner[r, width - len(row) :] = branch
            pos[r, width - len(row) :] = torch.arange(len(row))
        lengths = torch.tensor([len(row) for row in rows_ids], device=start.device)
        self.after[branch] = start + lengths
        return self.forward(ids, owner, start[:, None] + pos)

    def forward(self, ids, owner, positions):
        """Feed ids with their owners and positions (all (rows, q)); their hidden states."""
        import torch

        if self.static:
            return self.static_forward(ids, owner, positions, self.take_slots(owner.shape[1]))
        self.owner = torch.cat([self.owner, owner], dim=1)
        q, kv = owner.shape[1], self.owner.shape[1]
        visible = self._sees(owner.device)[owner[:, :, None], self.owner[:, None, :]]
        key = torch.arange(kv, device=owner.device)
        query = torch.arange(kv - q, kv, device=owner.device)
        return self._run(ids, visible & (key[None, :] <= query[:, None]), positions)

    def take_slots(self, q: int):
        """The next q slots of a static tree, (q,) on its device."""
        import torch

        if self.used + q > self.owner.shape[1]:
            kept = self.owner.shape[1]
            raise ModelError(f"decoding needs {self.used + q} cache slots, {kept} kept")
        slots = torch.arange(self.used, self.used + q, device=self.owner.device)
        self.used += q
        return slots

    def static_forward(self, ids, owner, positions, slots):
        """forward on a static tree, the tokens written at `slots` (q,): device work only,
        the same shapes at every step of the same width, so a CUDA graph can capture it."""
        import torch

        self.owner.index_copy_(1, slots, owner)
        for layer in self.cache.layers:
            layer.slots = slots
        visible = self._sees(owner.device)[owner[:, :, None], self.owner[:, None, :]]
        key = torch.arange(self.owner.shape[1], device=owner.device)
        return self._run(ids, visible & (key[None, :] <= slots[:, None]), positions)

    def _run(self, ids, allowed, positions):
        """The language model on ids, each token attending where `allowed` (rows, q, kv)."""
        import torch

        dtype = self.annotator.loaded.dtype
        bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        bias.masked_fill_(~allowed, torch.finfo(dtype).min)
        with attention_kernels():
            out = self.annotator.lm(
                inputs_embeds=self.annotator.embed(ids),
                attention_mask=bias[:, None],
                position_ids=positions,
                cache=self.cache,
                use_cache=True,
            )
        return out.last_hidden_state

    def select(self, rows) -> None:
        """Keep only these rows (images whose fields are all done leave the batch)."""
        if self.static:
            raise ModelError("rows of a static tree stay (its shapes never change)")
        left = self.cache.layers[0].room_left() if self.cache.layers else 0
        self.cache = growing_cache([(k[rows], v[rows]) for k, v in kv_pairs(self.cache)], left)
        self.owner = self.owner[rows]
        self.after = {b: a[rows] for b, a in self.after.items()}


def attention_kernels():
    """torch's attention kernels for the language model's forwards: any but cuDNN's.

    cuDNN's attention (torch's first choice for a masked bf16 attention on Hopper)
    builds a plan for every new shape, and every decoding step has a new cache
    length: on an H200 with the LLaVA-7B shape, the first pass over a batch spent
    0.1-0.2 s per step building plans, several times the step itself. The
    memory-efficient kernel takes the same mask with no per-shape cost.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


def kv_pairs(cache) -> list[tuple[Any, Any]]:
    return [(k, v) for k, v, *_ in cache]


def growing_cache(kv: list[tuple[Any, Any]], room: int):
    """A copy of kv with room for `room` more tokens per row, appended in place.

    DynamicCache appends with torch.cat, copying the whole cache at every step:
    with a 1,100-token image prefix that copy was two thirds of decoding time.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def __init__(self, keys, values) -> None:
            super().__init__()
            self.device = keys.device
            self.length = 0
            self._k = keys.new_empty((*keys.shape[:2], keys.shape[2] + room, keys.shape[3]))
            self._v = values.new_empty((*values.shape[:2], values.shape[2] + room, values.shape[3]))
            self.is_initialized = True
            self.update(keys, values)

        def update(self, key_states, value_states, *args, **kwargs):
            start, end = self.length, self.length + key_states.shape[-2]
            if end > self._k.shape[-2]:  # more than was reserved: grow, amortised
                self._k = _grown(self._k, start, 2 * end)
                self._v = _grown(self._v, start, 2 * end)
            self._k[:, :, start:end] = key_states
            self._v[:, :, start:end] = value_states
            self.length = end
            self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
            return self.keys, self.values

        def room_left(self) -> int:
            return self._k.shape[-2] - self.length

    cache = DynamicCache()
    cache.layers = [GrowingLayer(k, v) for k, v in kv]
    return cache


def static_cache(kv: list[tuple[Any, Any]], room: int):
    """A copy of kv in buffers of the prefix's length + room, written at the slots the
    tree names (`layer.slots`, a device tensor) by index_copy_, so no Python number of
    the cache's length is read during a step; every update returns the whole buffers.
    The unused slots are zeros (masked, but 0 x NaN would still be NaN)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        def __init__(self, keys, values) -> None:
            super().__init__()
            self.device = keys.device
            length = keys.shape[2]
            self.keys = keys.new_zeros((*keys.shape[:2], length + room, keys.shape[3]))
            self.values = values.new_zeros((*values.shape[:2], length + room, values.shape[3]))
            self.keys[:, :, :length] = keys
            self.values[:, :, :length] = values
            self.is_initialized = True
            self.slots = None

        def update(self, key_states, value_states, *args, **kwargs):
            self.keys.index_copy_(2, self.slots, key_states)
            self.values.index_copy_(2, self.slots, value_states)
            return self.keys, self.values

    cache = DynamicCache()
    cache.layers = [SlotLayer(k, v) for k, v in kv]
    return cache


class GraphedStep:
    """A decoding step of a static tree (tokens in, float logits out) captured as one CUDA
    graph at its first call and replayed at every later one: a step's few hundred kernel
    launches, which left a 7B model's decoding bound by the host, become one.

    The graph reads its inputs from buffers of its own (refilled before each replay) and
    writes the cache at the slots it is given there. If capture fails, the step runs
    without a graph, with a warning: the same results, only slower.
    """

    def __init__(self, tree: Tree, head: Any) -> None:
        self.tree, self.head = tree, head
        self.graph: Any = None
        self.inputs: list[Any] = []
        self.out: Any = None

    def __call__(self, ids, owner, positions):
        slots = self.tree.take_slots(ids.shape[1])
        if self.graph is False:
            return self._step(ids, owner, positions, slots)
        if self.graph is None:
            return self._capture(ids, owner, positions, slots)
        for buffer, value in zip(self.inputs, (ids, owner, positions, slots), strict=True):
            buffer.copy_(value)
        self.graph.replay()
        return self.out

    def _step(self, ids, owner, positions, slots):
        return self.head(self.tree.static_forward(ids, owner, positions, slots)).float()

    def _capture(self, ids, owner, positions, slots):
        import torch

        self.inputs = [t.clone() for t in (ids, owner, positions, slots)]
        try:
            # Warm up on a side stream (lazy initialisations, kernel choices), as torch's
            # CUDA-graph recipe says; it writes the same slots the replay writes again.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._step(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.out = self._step(*self.inputs)
        except Exception as exc:  # noqa: BLE001 - any capture failure: run without a graph
            log.warning("decoding runs without a CUDA graph (capture failed: %s)", exc)
            self.graph = False
            return self._step(ids, owner, positions, slots)
        self.graph = graph
        graph.replay()
        return self.out


def _grown(buffer, used: int, size: int):
    out = buffer.new_empty((*buffer.shape[:2], size, buffer.shape[3]))
    out[:, :, :used] = buffer[:, :, :used]
    return out
