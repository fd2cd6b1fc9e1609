"""Batched Predator-Prey and Predator-Capture-Prey on torch tensors, CPU or CUDA (docs/tasks.md, "Predator-Prey"
and "Predator-Capture-Prey").

The grid tasks of IC3Net (Singh et al., ICLR 2019) and MAGIC (Niu et al., AAMAS 2021) as used by CommFormer:
a dim x dim grid, one prey that never moves, predators that see a (2v+1) x (2v+1) window around themselves and must
all reach the prey. Predator-Capture-Prey adds blind capture agents that must reach the prey and "capture" it.

Shape letters: B envs, N agents, O obs width, S state width (N*O), A actions, D = dim*dim cells, W = (2v+1)^2
window cells. Positions are kept as cell ids (row*dim + col).

Rules (docs/tasks.md states them for users):
- Actions: 0 up (row-1), 1 right (col+1), 2 down (row+1), 3 left (col-1), 4 stay; a move into a wall stays.
  Predator-Capture-Prey adds 5 capture: available to a capture agent while it is not done, never to a predator; it
  succeeds only on the prey's cell. Agents may share cells.
- An agent is done once a predator stands on the prey's cell after its move, or a capture agent has captured.
  A done agent stays alive but is frozen: inactive, only "stay" available, reward 0 from then on.
- Reward after the move: -0.05 for each agent not done, 0 for a done one.
- The episode terminates (success) when every agent is done and is truncated after episode_limit steps; success on
  the last step counts as terminated (truncated False).
- Spawn: every agent and the prey on distinct cells, drawn uniformly; the prey never moves.
- Predator observation: the W window cells row-major from the top-left, each a vector of D + 4 values:
  one-hot of the cell id for cells inside the grid; index D = number of capture agents in the cell (always 0 in
  Predator-Prey); index D+1 = 1 for cells outside the grid (nothing else set there); index D+2 = number of prey;
  index D+3 = number of predators, the observer included. Capture agents are NOT counted in index D+3 (ours: each
  class has its own index, so a predator can tell a capture agent from another predator).
  Capture agent observation: the one-hot of its own cell id, padded with zeros to O.
- Global state: the concatenated observations [B, N*O] (a view of obs).

Unavailable actions act as "stay" (a done agent's action and a predator's capture are ignored). Actions outside
[0, A) raise ValueError on CPU (an asynchronous device assert on CUDA).
"""
from __future__ import annotations

from typing import Sequence

import gymnasium
import torch
from torch import Tensor

from envs.core import EnvConfigError, EnvSpec, FamilyInfo, Step, check_actions, check_int, check_num_envs
from envs.grid_tables import (CAPTURE_INDEX, PREDATOR_INDEX, PREY_INDEX, cells_to_pos, distinct_tuples, move_table,
                               n_distinct_tuples, pair_offsets, window_table)
from envs.recycled_buffers import RecycledBuffers

UP, RIGHT, DOWN, LEFT, STAY, CAPTURE = 0, 1, 2, 3, 4, 5
STEP_PENALTY = -0.05

# Largest table of distinct spawn tuples kept on the device (rows); bigger grids draw spawns with top-k instead.
SPAWN_TABLE_MAX_ROWS = 1 << 20


# ----------------------------------------------------------------------------------------------- the envs


class _GridPursuit(FamilyInfo):
    """Shared engine of PredatorPrey and PredatorCapturePrey: n_predators seeing predators, then n_capture blind
    capture agents (agent order), one static prey. See the module docstring for the rules."""

    def __init__(self, num_envs: int, device: torch.device | str, dim: int, n_predators: int, n_capture: int,
                 vision: int, episode_limit: int, n_actions: int):
        self.num_envs = check_num_envs(num_envs)
        self.device = torch.device(device)
        check_grid(dim, n_predators, n_capture, vision, episode_limit)
        self.dim, self.n_predators, self.n_capture, self.vision = dim, n_predators, n_capture, vision
        self.episode_limit = episode_limit
        n_agents = n_predators + n_capture
        n_cells, side = dim * dim, 2 * vision + 1
        self.n_cells, self.window_cells = n_cells, side * side
        self.cell_width = n_cells + 4
        obs_dim = self.window_cells * self.cell_width
        names = tuple(f"predator_{i}" for i in range(n_predators)) + tuple(f"capture_{i}" for i in range(n_capture))
        obs_high = float(max(n_predators, n_capture, 1))
        obs_spaces = {n: gymnasium.spaces.Box(0.0, obs_high, (obs_dim,), dtype="float32") for n in names[:n_predators]}
        obs_spaces |= {n: gymnasium.spaces.Box(0.0, 1.0, (n_cells,), dtype="float32") for n in names[n_predators:]}
        self.spec = EnvSpec(
            n_agents=n_agents, obs_dim=obs_dim, state_dim=n_agents * obs_dim, n_actions=n_actions,
            episode_limit=episode_limit, agent_names=names, observation_spaces=obs_spaces,
            action_spaces={n: gymnasium.spaces.Discrete(n_actions) for n in names}, task_metrics=("success",),
        )
        self._build_tables()
        self._generator: torch.Generator | None = None
        B, N = self.num_envs, n_agents
        # cell ids [B,N+1] of the entities: the N agents, then the prey
        self._cells = torch.zeros(B, N + 1, dtype=torch.long, device=self.device)
        # actions [B,N+1] of the entities; the prey's column is always "stay"
        self._moves = torch.full((B, N + 1), STAY, dtype=torch.long, device=self.device)
        self._done = torch.zeros(B, N, dtype=torch.bool, device=self.device)
        self._t = torch.zeros(B, dtype=torch.long, device=self.device)
        self._return = torch.zeros(B, dtype=torch.float32, device=self.device)
        # CUDA's caching allocator already reuses memory; the pool is for CPU.
        self._obs_buffers = RecycledBuffers((B * N * obs_dim + 1,), self.device) if self.device.type == "cpu" else None

    def _build_tables(self) -> None:
        """Precompute every lookup the step uses, on the env's device."""
        dev, D, Np, N, A = self.device, self.n_cells, self.n_predators, self.spec.n_agents, self.spec.n_actions
        self._move = move_table(self.dim, A).to(dev)
        capture_rows = torch.zeros(D, self.spec.obs_dim)
        capture_rows[:, :D] = torch.eye(D)
        # rows 0..D-1: a predator's empty window; rows D..2D-1: a capture agent's own-cell one-hot.
        self._obs_table = torch.cat([window_table(self.dim, self.vision), capture_rows]).to(dev)
        self._row_offset = torch.tensor([0] * Np + [D] * self.n_capture, device=dev)  # [N]
        # What a predator's view counts besides itself: the other agents and the prey (entity N), each at its
        # own index; others [Np,N]: the entities predator i counts.
        channel = torch.tensor([D + PREDATOR_INDEX] * Np + [D + CAPTURE_INDEX] * self.n_capture + [D + PREY_INDEX])
        others = torch.tensor([[j for j in range(N + 1) if j != i] for i in range(Np)])
        self._others = others.view(-1).to(dev)
        # Flat index in the obs buffer of the value entity others[i,j] increments in env b, predator i's view,
        # before adding the window offset: (b*N + i)*O + channel -> [B,Np,N]. The buffer has one spare value at
        # the end (the "trash" slot, never read) that collects the entities outside a window.
        B, O = self.num_envs, self.spec.obs_dim
        self._trash = B * N * O
        obs_base = (torch.arange(B)[:, None] * N + torch.arange(Np)) * O  # [B,Np]
        self._entity_base = (obs_base[:, :, None] + channel[others]).to(dev)
        self._pair_offset = pair_offsets(self.dim, self.vision, outside=self._trash).to(dev)
        self._ones = torch.ones(B * Np * N, device=dev)
        self._is_predator = (torch.arange(N, device=dev) < Np)[None, :]  # [1,N]
        # available actions by (agent class, done): rows 0 predator, 1 predator done, 2 capture, 3 capture done
        avail = torch.zeros(4, A, dtype=torch.bool)
        avail[0, :5] = True
        avail[[1, 3], STAY] = True
        avail[2, :] = True
        self._avail_table = avail.to(dev)
        self._avail_class = torch.tensor([0] * Np + [2] * self.n_capture, device=dev)  # [N]
        if n_distinct_tuples(D, N + 1) <= SPAWN_TABLE_MAX_ROWS:
            self._spawn_table: Tensor | None = distinct_tuples(D, N + 1).to(dev)
        else:
            self._spawn_table = None

    # ------------------------------------------------------------------ pure-ish tensor helpers (no state change)

    def _spawn(self) -> Tensor:
        """Fresh spawns for all B envs: entity cells [B,N+1] long (agents, then the prey), distinct, uniform."""
        B, D, N = self.num_envs, self.n_cells, self.spec.n_agents
        if self._spawn_table is not None:
            pick = torch.randint(self._spawn_table.shape[0], (B,), generator=self._generator, device=self.device)
            return self._spawn_table.index_select(0, pick).long()
        keys = torch.rand(B, D, generator=self._generator, device=self.device)
        return keys.topk(N + 1, dim=1).indices

    def _observe(self, cells: Tensor) -> Tensor:
        """Observations [B,N,O] f32 of entities at `cells` [B,N+1] long (agents, then the prey)."""
        B, N, O, Np = self.num_envs, self.spec.n_agents, self.spec.obs_dim, self.n_predators
        buf = self._obs_buffers.get() if self._obs_buffers else torch.empty(B * N * O + 1, device=self.device)
        obs = buf[:-1].view(B * N, O)
        torch.index_select(self._obs_table, 0, (cells[:, :N] + self._row_offset).view(-1), out=obs)
        # Count the other agents and the prey inside each predator's window: one index per (predator, entity).
        entity = cells.index_select(1, self._others).view(B, Np, N)
        pair = (cells[:, :Np, None] * self.n_cells + entity).view(-1)  # [B*Np*N]
        target = (self._pair_offset.index_select(0, pair).view(B, Np, N) + self._entity_base).clamp_(max=self._trash)
        buf.scatter_add_(0, target.view(-1), self._ones)
        return obs.view(B, N, O)

    def _avail(self, done: Tensor) -> Tensor:
        """[B,N,A] bool from the agents' done flags [B,N]."""
        B, N, A = self.num_envs, self.spec.n_agents, self.spec.n_actions
        return self._avail_table.index_select(0, (self._avail_class + done.long()).view(-1)).view(B, N, A)

    def _make_step(self, obs: Tensor, reward: Tensor, terminated: Tensor, truncated: Tensor, final_obs: Tensor,
                   episode: dict[str, Tensor]) -> Step:
        """Assemble a Step; avail_actions and active come from the current done flags, every agent is alive."""
        B, N = self.num_envs, self.spec.n_agents
        alive = torch.ones(B, N, dtype=torch.bool, device=self.device)
        return Step(
            obs=obs, state=obs.view(B, -1), avail_actions=self._avail(self._done), reward=reward,
            terminated=terminated, truncated=truncated, alive=alive, active=~self._done,
            final_obs=final_obs, final_state=final_obs.view(B, -1), final_alive=alive.clone(), episode=episode,
        )

    def _current_step(self) -> Step:
        """A Step of the current state with zero reward and no episode ending (after reset / place)."""
        B, N, dev = self.num_envs, self.spec.n_agents, self.device
        no = torch.zeros(B, dtype=torch.bool, device=dev)
        episode = {"return": self._return.clone(), "length": self._t.float(), "success": no.float()}
        obs = self._observe(self._cells)
        return self._make_step(obs, torch.zeros(B, N, device=dev), no, no.clone(), obs, episode)

    # ------------------------------------------------------------------ the VecEnv interface

    def reset(self, seed: int | None = None) -> Step:
        """Start a new episode in all B envs. `seed` re-creates the env's generator (a torch.Generator on the env's
        device); None continues it (or, before any seed, starts one from a nondeterministic seed)."""
        if seed is not None or self._generator is None:
            self._generator = torch.Generator(device=self.device)
            if seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(int(seed))
        self._cells = self._spawn()
        self._done = torch.zeros_like(self._done)
        self._t = torch.zeros_like(self._t)
        self._return = torch.zeros_like(self._return)
        return self._current_step()

    def step(self, actions: Tensor) -> Step:
        """Advance all B envs by one step; actions [B,N] integer in [0, A). Finished envs restart inside (see
        envs.core). episode["return" | "length" | "success"] [B] f32 hold the finished episodes' statistics where
        terminated | truncated, and the running episodes' return and length so far (success 0) elsewhere."""
        if self._generator is None:
            raise RuntimeError("step() before reset(): call reset(seed) first")
        check_actions(actions, self.num_envs, self.spec.n_agents)
        actions = actions.to(self.device, torch.long)
        self._check_range(actions)
        N = self.spec.n_agents
        moves = self._moves  # [B,N+1]; the prey's column is "stay"
        moves[:, :N] = actions
        moves[:, :N].masked_fill_(self._done, STAY)  # done agents stay
        flat = (self._cells * self.spec.n_actions + moves).view(-1)
        cells = self._move.view(-1).index_select(0, flat).view(self.num_envs, N + 1)  # [B,N+1] after the move
        on_prey = cells[:, :N] == cells[:, N:]
        done = self._done | (on_prey & (self._is_predator | (moves[:, :N] == CAPTURE)))
        reward = torch.where(done, 0.0, STEP_PENALTY)
        t = self._t + 1
        ret = self._return + reward.mean(dim=1)
        terminated = done.all(dim=1)
        truncated = (t >= self.episode_limit) & ~terminated
        finished = terminated | truncated
        final_obs = self._observe(cells)
        episode = {"return": ret, "length": t.float(), "success": terminated.float()}

        self._cells = torch.where(finished[:, None], self._spawn(), cells)
        self._done = done & ~finished[:, None]
        self._t = torch.where(finished, 0, t)
        self._return = torch.where(finished, 0.0, ret)
        # No env finished (most steps): the cells did not change, so the observation is final_obs itself (the spawn
        # above is still drawn, keeping the generator's stream). On CPU the check is a cheap host read; elsewhere it
        # would be a device sync, so the observation is recomputed there.
        if self.device.type == "cpu" and not bool(finished.any()):
            obs = final_obs
        else:
            obs = self._observe(self._cells)
        return self._make_step(obs, reward, terminated, truncated, final_obs, episode)

    def _check_range(self, actions: Tensor) -> None:
        """Actions must lie in [0, A): ValueError on CPU; an asynchronous assert elsewhere (no host sync)."""
        lo, hi = actions.aminmax()
        ok = (lo >= 0) & (hi < self.spec.n_actions)
        if self.device.type == "cpu":
            if not bool(ok):
                raise ValueError(f"step(): actions range over [{int(lo)}, {int(hi)}]; "
                                 f"must be in [0, {self.spec.n_actions - 1}]")
        else:
            torch._assert_async(ok, f"step(): actions must be in [0, {self.spec.n_actions - 1}]")

    def close(self) -> None:
        """Nothing to release."""

    def render_frame(self, env_index: int = 0, graph: Tensor | None = None, gate: Tensor | None = None):
        """[H,W,3] uint8 numpy image of env `env_index`: grid, prey, vision windows, agents, and the communication
        edges of graph [N,N] bool (receiver i listens to sender j: arrow j -> i) with closed gates [N] marked
        (envs.render.grid_frame; needs the [plot] extra)."""
        from envs.render import render_grid_env

        return render_grid_env(self, env_index, graph, gate)

    def state_dict(self) -> dict[str, Tensor]:
        """Everything the next step() depends on (for exact resume): positions, done flags, counters, RNG."""
        if self._generator is None:
            raise RuntimeError("state_dict() before reset(): call reset(seed) first")
        return {"cells": self._cells.clone(), "done": self._done.clone(), "t": self._t.clone(),
                "return": self._return.clone(), "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore a state_dict() of an env with the same settings."""
        if tuple(state["cells"].shape) != tuple(self._cells.shape):
            raise ValueError(f"env state of shape {tuple(state['cells'].shape)} does not fit this env "
                             f"([B={self.num_envs}, N+1={self.spec.n_agents + 1}])")
        self._cells = state["cells"].to(self.device)
        self._done = state["done"].to(self.device)
        self._t = state["t"].to(self.device)
        self._return = state["return"].to(self.device)
        self._generator = torch.Generator(device=self.device)
        self._generator.set_state(state["generator"].cpu())

    # ------------------------------------------------------------------ inspection and hand-set states (tests)

    @property
    def predator_pos(self) -> Tensor:
        """[B,Np,2] long: (row, col) of each predator."""
        return cells_to_pos(self._cells[:, : self.n_predators], self.dim)

    @property
    def prey_pos(self) -> Tensor:
        """[B,2] long: (row, col) of the prey."""
        return cells_to_pos(self._cells[:, -1], self.dim)

    @property
    def agent_done(self) -> Tensor:
        """[B,N] bool: predators on the prey and capture agents that have captured."""
        return self._done.clone()

    @property
    def elapsed(self) -> Tensor:
        """[B] long: steps taken in the running episodes."""
        return self._t.clone()

    def _as_cells(self, key: str, pos: Tensor | Sequence, count: int | None) -> Tensor:
        """Positions (row, col) given as [B,count,2] / [count,2] (or [B,2] / [2] when count is None) -> cell ids."""
        p = torch.as_tensor(pos, dtype=torch.long, device=self.device)
        want = (count, 2) if count is not None else (2,)
        if tuple(p.shape) == want:
            p = p.expand(self.num_envs, *want)
        if tuple(p.shape) != (self.num_envs, *want):
            raise ValueError(f"place(): {key} must be {list(want)} or [B={self.num_envs}, {', '.join(map(str, want))}]"
                             f" (row, col), got {list(p.shape)}")
        if bool(((p < 0) | (p >= self.dim)).any()):
            raise ValueError(f"place(): {key}={p.tolist()}; rows and columns must be in [0, {self.dim - 1}]")
        return p[..., 0] * self.dim + p[..., 1]

    def _place(self, predators: Tensor | Sequence, prey: Tensor | Sequence,
               capture: Tensor | Sequence | None) -> Step:
        pred_cells = self._as_cells("predators", predators, self.n_predators)
        prey_cell = self._as_cells("prey", prey, None)
        if self._generator is None:
            self.reset()
        cells = [pred_cells]
        if self.n_capture:
            cells.append(self._cells[:, self.n_predators:-1] if capture is None
                         else self._as_cells("capture", capture, self.n_capture))
        cells.append(prey_cell[:, None])
        self._cells = torch.cat(cells, dim=1)
        self._done = (self._cells[:, :-1] == prey_cell[:, None]) & self._is_predator
        return self._current_step()


class PredatorPrey(_GridPursuit):
    """Predator-Prey: `n_predators` predators on a `dim` x `dim` grid with vision `vision` must all reach one static
    prey within `episode_limit` steps. N = n_predators, A = 5, O = (2v+1)^2 * (dim^2 + 4)."""

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", dim: int = 5, n_predators: int = 3,
                 vision: int = 1, episode_limit: int = 20):
        super().__init__(num_envs, device, dim, n_predators, 0, vision, episode_limit, n_actions=5)

    @staticmethod
    def check_config(params: dict) -> None:
        """The values' checks, without building anything (envs.registry.validate_env_config runs it)."""
        check_grid(params["dim"], params["n_predators"], 0, params["vision"], params["episode_limit"])

    def place(self, predators: Tensor | Sequence, prey: Tensor | Sequence) -> Step:
        """Put the predators at `predators` ([B,N,2] or [N,2], (row, col)) and the prey at `prey` ([B,2] or [2]);
        predators on the prey become done, others active; the step counter and the return so far are kept.
        Returns the Step (reward 0) of the placed state."""
        return self._place(predators, prey, None)


def check_grid(dim: int, n_predators: int, n_capture: int, vision: int, episode_limit: int) -> None:
    """EnvConfigError (one line) unless the values make a grid task: a grid with a cell for every agent and the prey,
    a vision no wider than the grid (dim - 1 already covers it from every cell)."""
    check_int("env.dim", dim, 1)
    check_int("env.n_predators", n_predators, 1)
    check_int("env.vision", vision, 0)
    check_int("env.episode_limit", episode_limit, 1)
    n_agents = n_predators + n_capture
    if dim * dim < n_agents + 1:
        raise EnvConfigError(f"env.dim={dim}; a {dim}x{dim} grid has fewer than the {n_agents + 1} distinct cells "
                             f"that {n_agents} agents and the prey need")
    if vision > dim - 1:
        raise EnvConfigError(f"env.vision={vision}; must be <= env.dim - 1 = {dim - 1} (env.dim={dim}: a wider "
                             "window sees nothing more and only makes the observations larger)")


class PredatorCapturePrey(_GridPursuit):
    """Predator-Capture-Prey: `n_predators` seeing predators (agents 0..Np-1) and `n_capture` blind capture agents
    (the last agents) with a 6th action, capture. A = 6."""

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", dim: int = 5, n_predators: int = 2,
                 n_capture: int = 1, vision: int = 1, episode_limit: int = 20):
        super().__init__(num_envs, device, dim, n_predators, check_int("env.n_capture", n_capture, 1), vision,
                         episode_limit, n_actions=6)

    @staticmethod
    def check_config(params: dict) -> None:
        """The values' checks, without building anything (envs.registry.validate_env_config runs it)."""
        check_grid(params["dim"], params["n_predators"], check_int("env.n_capture", params["n_capture"], 1),
                   params["vision"], params["episode_limit"])

    @property
    def capture_pos(self) -> Tensor:
        """[B,Nc,2] long: (row, col) of each capture agent."""
        return cells_to_pos(self._cells[:, self.n_predators:-1], self.dim)

    def place(self, predators: Tensor | Sequence, prey: Tensor | Sequence,
              capture: Tensor | Sequence | None = None) -> Step:
        """As PredatorPrey.place; `capture` ([B,Nc,2] or [Nc,2]) moves the capture agents (None keeps them), and
        every capture agent becomes active (not captured)."""
        return self._place(predators, prey, capture)
