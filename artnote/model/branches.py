"""Branches of an image's prefix packed side by side in one KV cache row.

The annotator scores the emotion labels and decodes the text fields as branches of
each image's prefix: `Tree` keeps who owns each cached token and builds the 4-D mask
that lets a branch see only the prefix, its ancestors and itself; `growing_cache`
appends in place instead of copying the cache at every step.
"""

from __future__ import annotations

from typing import Any

PREFIX, DEAD = 0, -1  # cache owners: the image prefix, and padding (seen by nobody)


class Tree:
    """Branches of each row's prefix, packed side by side in the row's own KV cache.

    Every cached token has an owner: the prefix (0), a branch (1, 2, ...) or
    nobody (DEAD: padding). A token sees, causally, the tokens of its own
    branch and of the branch's ancestors, at positions counted along that path;
    so each branch computes what it would alone after the prefix, while the
    prefix's cache exists once per image instead of once per field or label.
    """

    def __init__(self, annotator: Any, kv, mask, room: int) -> None:
        import torch

        self.annotator = annotator
        self.cache = growing_cache(kv, room)  # a copy: the root is never changed
        self.owner = torch.where(mask.bool(), PREFIX, DEAD)
        self.parents: list[int | None] = [None]
        self._table = None
        self.after = {PREFIX: mask.sum(dim=-1)}  # branch -> position after its last token

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

        self.owner = torch.cat([self.owner, owner], dim=1)
        q, kv = owner.shape[1], self.owner.shape[1]
        visible = self._sees(owner.device)[owner[:, :, None], self.owner[:, None, :]]
        key = torch.arange(kv, device=owner.device)
        query = torch.arange(kv - q, kv, device=owner.device)
        allowed = visible & (key[None, :] <= query[:, None])
        dtype = self.annotator.loaded.dtype
        bias = torch.zeros(allowed.shape, dtype=dtype, device=owner.device)
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


def _grown(buffer, used: int, size: int):
    out = buffer.new_empty((*buffer.shape[:2], size, buffer.shape[3]))
    out[:, :, :used] = buffer[:, :, :used]
    return out
