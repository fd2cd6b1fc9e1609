"""envs/render.py: frames of hand-set states with known graphs, checked pixel by pixel on and off the arrows; the
Predator-Prey exports' rgb_array; MPE frames with edges at mpe2's agent positions."""
import numpy as np
import pytest
import torch

pytest.importorskip("PIL")

from envs.export import PredatorCapturePreyParallelEnv, PredatorPreyParallelEnv  # noqa: E402
from envs.predator_prey import PredatorCapturePrey, PredatorPrey  # noqa: E402
from envs.render import (BLOCKED, CLOSED, EDGE, LEGEND_HEIGHT, PREY, cell_centre,  # noqa: E402
                         grid_geometry, grid_scene)
from envs.render_adapters import mpe_agent_pixels  # noqa: E402

CELL, MARGIN = 64, 8  # grid_frame's defaults


def is_edge(frame, x, y):
    return tuple(frame[int(round(y)), int(round(x))]) == EDGE


def corner_state():
    """5x5, predators 0, 1, 2 at (0,0), (0,4), (4,0), prey at (4,4): 0 -> 1 is a row, 0 -> 2 a column."""
    env = PredatorPrey(1)
    env.reset(seed=0)
    env.place(predators=[[0, 0], [0, 4], [4, 0]], prey=[4, 4])
    return env


def only(receiver, sender, n=3):
    g = torch.zeros(n, n, dtype=torch.bool)
    g[receiver, sender] = True
    return g


def grid_area(frame):
    """The grid's pixels (no legend strip)."""
    side = 2 * MARGIN + 5 * CELL
    return frame[:side, :side]


@pytest.mark.parametrize("receiver, sender", [(1, 0), (0, 1)])
def test_arrow_runs_from_sender_to_receiver(receiver, sender):
    """graph[receiver, sender] only: edge-coloured pixels along the row between the two predators (head at the
    receiver's end), none on the column to predator 2 and none anywhere off the row."""
    env = corner_state()
    frame = env.render_frame(0, only(receiver, sender), None)
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    centres, radius = grid_geometry(grid_scene(env), CELL, MARGIN)
    (xs, y), (xr, _) = centres[sender], centres[receiver]
    step = 1 if xr > xs else -1
    for t in (0.3, 0.5, 0.7):  # on the shaft
        assert is_edge(frame, xs + t * (xr - xs), y)
    tip = xr - step * radius[receiver]
    start = xs + step * radius[sender]
    # the head is wide near the receiver; the shaft (3 px) is thin near the sender
    assert is_edge(frame, tip - step * 9, y + 4) and is_edge(frame, tip - step * 9, y - 4)
    assert not is_edge(frame, start + step * 9, y + 4) and not is_edge(frame, start + step * 9, y - 4)
    # off the path: the column from predator 0 down to predator 2 and everything away from the row
    (x0, y0), (_, y2) = centres[0], centres[2]
    assert not is_edge(frame, x0, (y0 + y2) / 2)
    mask = np.all(grid_area(frame) == EDGE, axis=-1)
    rows = np.nonzero(mask.any(axis=1))[0]
    assert mask.sum() > 100 and rows.min() >= y - 8 and rows.max() <= y + 8


def test_no_graph_no_edge_pixels_and_the_prey_is_drawn():
    env = corner_state()
    frame = env.render_frame(0, None, None)
    assert not np.all(grid_area(frame) == EDGE, axis=-1).any()
    assert tuple(frame[tuple(int(v) for v in reversed(cell_centre(4, 4, CELL, MARGIN)))]) == PREY


def test_closed_gate_blocks_the_arrow_and_marks_the_receiver():
    """Receiver 1's gate closed: the 0 -> 1 edge is drawn dashed grey (no orange), and agent 1 gets the mark."""
    env = corner_state()
    g = only(1, 0)
    open_frame = env.render_frame(0, g, torch.tensor([True, True, True]))
    closed_frame = env.render_frame(0, g, torch.tensor([True, False, True]))
    assert not np.all(grid_area(closed_frame) == EDGE, axis=-1).any()
    assert np.all(grid_area(closed_frame) == BLOCKED, axis=-1).sum() > 30
    centres, radius = grid_geometry(grid_scene(env), CELL, MARGIN)
    x, y = centres[1].astype(int)
    r = int(radius[1]) + 5

    def black(frame):
        return int(np.all(frame[y - r:y + r, x - r:x + r] == CLOSED, axis=-1).sum())

    assert black(closed_frame) > black(open_frame) + 50


def test_capture_agents_and_shared_cells_are_drawn_apart():
    """Predator-Capture-Prey with every agent on one cell: three distinct discs around the cell's centre."""
    env = PredatorCapturePrey(1)
    env.reset(seed=0)
    env.place(predators=[[2, 2], [2, 2]], prey=[0, 0], capture=[[2, 2]])
    centres, radius = grid_geometry(grid_scene(env), CELL, MARGIN)
    gaps = [np.hypot(*(centres[i] - centres[j])) for i in range(3) for j in range(i)]
    assert min(gaps) > radius.max()
    frame = env.render_frame(0, torch.ones(3, 3, dtype=torch.bool), None)
    assert frame.shape[0] > 5 * CELL


@pytest.mark.parametrize("cls", [PredatorPreyParallelEnv, PredatorCapturePreyParallelEnv])
def test_export_rgb_array(cls):
    env = cls(render_mode="rgb_array")
    assert "rgb_array" in env.metadata["render_modes"]
    env.reset(seed=3)
    frame = env.render()
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    r, c = env.env.prey_pos[0].tolist()
    x, y = cell_centre(r, c, CELL, MARGIN)
    assert tuple(frame[int(y), int(x)]) == PREY or any(  # an agent may stand on the prey
        tuple(p) == tuple(env.env.prey_pos[0].tolist()) for p in env.env.predator_pos[0].tolist())
    env.step({a: 4 for a in env.agents})
    assert env.render().shape == frame.shape


def test_mpe_frame_has_edges_at_the_agents_pixels():
    """simple_spread through the PettingZoo adapter: mpe2's own frame is agent-coloured at mpe_agent_pixels'
    centres, and the 0 -> 1 edge crosses the midpoint between agents 0 and 1 (nothing orange without a graph)."""
    pytest.importorskip("mpe2")
    from envs.render_adapters import make_render_env

    cfg = {"name": "mpe", "family": "pettingzoo", "factory": "mpe2.simple_spread_v3:parallel_env",
           "kwargs": {"N": 3, "continuous_actions": False, "max_cycles": 25}, "episode_limit": 25}
    env = make_render_env(cfg)
    try:
        env.reset(seed=0)
        penv = env.copy_env(0)
        plain = penv.render()
        centres, radius = mpe_agent_pixels(penv.unwrapped)
        for x, y in centres:
            colour = plain[int(y), int(x)].astype(int)
            assert colour[2] > colour[0] + 60, colour  # mpe2 draws agents blue, landmarks grey
        none = env.render_frame(0, None, None)
        assert not np.all(none[:-LEGEND_HEIGHT] == EDGE, axis=-1).any()  # the legend's arrow aside
        frame = env.render_frame(0, only(1, 0), None)
        (x0, y0), (x1, y1) = centres[0], centres[1]
        assert is_edge(frame, (x0 + x1) / 2, (y0 + y1) / 2)
        assert np.all(frame[:-LEGEND_HEIGHT] == EDGE, axis=-1).sum() > 100
    finally:
        env.close()


def test_smax_frame_draws_edges_between_live_allies():
    """SMAX 3m through jaxmarl's own drawing (SMAX.init_render): orange appears with an edge between two live
    allies and not without a graph (the legend strip aside)."""
    pytest.importorskip("jaxmarl")
    from envs.render_adapters import make_render_env

    env = make_render_env({"name": "smax", "family": "smax", "scenario": "3m"})
    try:
        env.reset(seed=0)

        def orange(frame):
            f = frame[:-LEGEND_HEIGHT].astype(int)
            return int(((f[..., 0] > 200) & (abs(f[..., 1] - 128) < 40) & (f[..., 2] < 80)).sum())

        assert orange(env.render_frame(0, None, None)) == 0
        with_edge = env.render_frame(0, only(2, 0), torch.tensor([True, True, True]))  # allies 0, 1 touch
        assert with_edge.dtype == np.uint8 and with_edge.shape[2] == 3 and orange(with_edge) > 20
    finally:
        env.close()
