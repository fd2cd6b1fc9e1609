"""Lookup tables of the batched grid-pursuit envs (envs.predator_prey): the cell each action reaches, a lone
predator's observation window at each cell, where one cell sits in another's window, and every spawn tuple of
distinct cells. Cells are ids row*dim + col; D = dim*dim cells, W = (2v+1)^2 window cells, A actions.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# (d_row, d_col) of the move actions 0 up, 1 right, 2 down, 3 left, 4 stay (envs.predator_prey.UP .. STAY)
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1), (0, 0))

# Offsets inside one window cell's vector of D + 4 values, counted from D.
CAPTURE_INDEX, OUTSIDE_INDEX, PREY_INDEX, PREDATOR_INDEX = 0, 1, 2, 3


def move_table(dim: int, n_actions: int) -> Tensor:
    """[D, A] long: the cell reached from each cell by each action; walls, stay and capture keep the cell."""
    row, col = torch.arange(dim * dim).div(dim, rounding_mode="floor"), torch.arange(dim * dim) % dim
    table = torch.arange(dim * dim)[:, None].repeat(1, n_actions)
    for a, (dr, dc) in enumerate(MOVES):
        r, c = (row + dr).clamp(0, dim - 1), (col + dc).clamp(0, dim - 1)
        table[:, a] = r * dim + c
    return table


def window_table(dim: int, vision: int) -> Tensor:
    """[D, W*(D+4)] f32: the view of a lone predator at each centre cell: cell-id one-hots, out-of-grid flags and
    the observer itself (predator count 1 at the centre cell)."""
    side, n_cells = 2 * vision + 1, dim * dim
    width = n_cells + 4
    table = torch.zeros(n_cells, side * side, width)
    for centre in range(n_cells):
        r0, c0 = divmod(centre, dim)
        for w in range(side * side):
            r, c = r0 + w // side - vision, c0 + w % side - vision
            if 0 <= r < dim and 0 <= c < dim:
                table[centre, w, r * dim + c] = 1.0
            else:
                table[centre, w, n_cells + OUTSIDE_INDEX] = 1.0
        table[centre, (side * side) // 2, n_cells + PREDATOR_INDEX] = 1.0
    return table.reshape(n_cells, side * side * width)


def pair_offsets(dim: int, vision: int, outside: int) -> Tensor:
    """[D*D] long, at i*D + j: w*(D+4) for the window cell w that holds cell j in the window centred on cell i,
    and `outside` when j is not in that window."""
    side, n_cells = 2 * vision + 1, dim * dim
    idx = torch.arange(n_cells)
    row, col = idx.div(dim, rounding_mode="floor"), idx % dim
    dr = row[None, :] - row[:, None] + vision  # [D,D]: j's row inside i's window
    dc = col[None, :] - col[:, None] + vision
    inside = (dr >= 0) & (dr < side) & (dc >= 0) & (dc < side)
    return torch.where(inside, (dr * side + dc) * (n_cells + 4), outside).reshape(-1)


def distinct_tuples(n_cells: int, k: int) -> Tensor:
    """[n_cells!/(n_cells-k)!, k] int32: every ordered tuple of k distinct cells."""
    rows = torch.arange(n_cells)[:, None]
    for _ in range(k - 1):
        cand = torch.arange(n_cells)
        grown = torch.cat([rows[:, None, :].expand(-1, n_cells, -1),
                           cand[None, :, None].expand(rows.shape[0], -1, 1)], dim=2)
        fresh = (rows[:, None, :] != cand[None, :, None]).all(dim=2)
        rows = grown[fresh]
    return rows.to(torch.int32)


def n_distinct_tuples(n_cells: int, k: int) -> int:
    """n_cells! / (n_cells - k)!."""
    return math.perm(n_cells, k)


def cells_to_pos(cells: Tensor, dim: int) -> Tensor:
    """cell ids [...] long -> (row, col) [..., 2] long."""
    return torch.stack([cells.div(dim, rounding_mode="floor"), cells % dim], dim=-1)
