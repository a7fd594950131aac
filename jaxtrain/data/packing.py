"""Packing documents into rows, and the rows' document boundaries (segment ids and loss weights).

A split is one token stream, documents in order, each followed by eos (token_cache.py). Two ways to cut it
into rows of T + 1 tokens (`data.packing`; inputs = row[:-1], targets = row[1:]):

- `concat` (the default; GPT-2's, nanoGPT's and Levanter's pretraining rows): row r is the window of T + 1
  tokens at r·T. No padding; a document may run on into the next row (rows overlap by one token, so every
  token is a target once per epoch).
- `pad` (whole documents, MaxText's and T5's packing of examples): documents are placed in order into rows,
  a new row begun when the next one does not fit (next-fit), the rest of the row padded. A document longer
  than a row is cut into pieces of T + 1 tokens overlapping by one (every token but its first is a target);
  its last piece is the start of a row like any document. Each row is still a contiguous range of the
  stream, `(start, length)`, so a row is read with one slice; the table of rows is made once from the
  positions of the eos tokens.

Boundaries (`segments`; the contract with the model, which keeps attention, RoPE positions and the loss
inside each document when `data.document_mask` is on): for each input token,

    segment_ids[i] = 1 + (number of eos among row[0 .. i-1])    (0 for padding)
    weights[i]     = 1 if row[i] is not eos and row[i + 1] is not padding, else 0,

so the eos ending a document belongs to it and is predicted from it (the model learns where documents end),
and the step from an eos to the next document's first token, which crosses a boundary, is not trained
(as Levanter's `LmExample.causal(..., eos_id=...)` masks it, and MaxText's packed targets' segmentation).
"""

from __future__ import annotations

import numpy as np

from jaxtrain import config as cfg_lib

SCHEMES = ("concat", "pad")
PAD_ID = 0  # the id written into padding (never attended to by real tokens: it is at the row's end; weight 0)


def concat_rows(num_tokens: int, seq_len: int) -> int:
  """Rows of T + 1 tokens at stride T in a stream of `num_tokens`."""
  return (num_tokens - 1) // seq_len


def read_concat(tokens: np.ndarray, rows: np.ndarray, seq_len: int) -> np.ndarray:
  """int32[len(rows), T + 1]: the windows of T + 1 tokens at rows·T (fancy indexing reads only these)."""
  return tokens[rows[:, None] * seq_len + np.arange(seq_len + 1)].astype(np.int32)


def pack_documents(doc_ends: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(starts int64[N], lengths int32[N]) of the rows of `pad` packing; `doc_ends`: each document's end in the
  stream (one past its eos), increasing. Next-fit in stream order, so each row is a contiguous range."""
  cap = seq_len + 1
  starts, lengths = [], []
  row_start, fill, begin = 0, 0, 0
  for end in np.asarray(doc_ends, np.int64).tolist():
    n = end - begin
    if fill and fill + n > cap:  # it does not fit behind what the row holds: close the row
      starts.append(row_start)
      lengths.append(fill)
      row_start, fill = begin, 0
    if n > cap:  # a long document: full pieces overlapping by one token, its tail begins the next row
      while n > cap:
        starts.append(begin)
        lengths.append(cap)
        begin += cap - 1
        n -= cap - 1
      row_start = begin
    fill += n
    begin = end
  if fill:
    starts.append(row_start)
    lengths.append(fill)
  return np.asarray(starts, np.int64), np.asarray(lengths, np.int32)


def read_packed(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, seq_len: int) -> np.ndarray:
  """int32[len(starts), T + 1]: the rows [start, start + length) of the stream, padded with PAD_ID."""
  offsets = np.arange(seq_len + 1)
  idx = np.minimum(starts[:, None] + offsets, len(tokens) - 1)  # a padded row's tail may lie past the stream
  rows = tokens[idx].astype(np.int32)
  rows[offsets >= lengths[:, None]] = PAD_ID
  return rows


def segments(rows_BT1: np.ndarray, eos_id: int, lengths_B: np.ndarray | None = None) -> tuple[np.ndarray,
                                                                                               np.ndarray]:
  """(segment_ids int32[B, T], weights float32[B, T]) of rows of T + 1 tokens (module docstring).

  `lengths_B`: each row's tokens before its padding (`pad` packing); None: no padding."""
  rows_BT1 = np.asarray(rows_BT1)
  T = rows_BT1.shape[1] - 1
  is_eos_BT = rows_BT1[:, :-1] == eos_id
  seg_BT = 1 + np.cumsum(is_eos_BT, axis=1, dtype=np.int32) - is_eos_BT  # eos counted after its own position
  weights_BT = ~is_eos_BT
  if lengths_B is not None:
    pos_T = np.arange(T)
    lengths_B1 = np.asarray(lengths_B)[:, None]
    seg_BT = np.where(pos_T < lengths_B1, seg_BT, 0)
    weights_BT &= pos_T + 1 < lengths_B1  # the target (at i + 1) is a real token
  return seg_BT.astype(np.int32), weights_BT.astype(np.float32)


def batch_dtypes(data_cfg) -> dict[str, str]:
  """The arrays of a batch, [B, T] each, and their dtypes: what the ahead-of-time compile lowers the step for."""
  out = {"inputs": "int32", "targets": "int32"}
  if data_cfg.document_mask or data_cfg.packing == "pad":
    out["weights"] = "float32"
  if data_cfg.document_mask:
    out["segment_ids"] = "int32"
  return out


def check(config, target) -> None:
  """`data.packing` and `data.document_mask`; one line each (ConfigError)."""
  del target
  d = config.data
  cfg_lib.check_choices(config, {"data.packing": SCHEMES})
  if not isinstance(d.document_mask, bool):
    raise cfg_lib.ConfigError(f"data.document_mask={d.document_mask!r} must be true or false")
