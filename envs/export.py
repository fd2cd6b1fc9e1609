"""Our batched envs as PettingZoo ParallelEnv (one env, numpy in and out), for use outside this framework.

Each class wraps its batched env with B=1 on CPU and is constructible with no arguments (the released setting);
keyword arguments go to the batched env (e.g. PredatorPreyParallelEnv(dim=10, n_predators=5, episode_limit=40)).

- Observations are float32 numpy arrays in each agent's own space (a capture agent's is its D = dim*dim cell
  one-hot, unpadded); infos carry "action_mask" (int8, 1 = available) for every agent, and at the episode's last
  step "episode" ({"return", "length", "success"}, as the batched env reports them).
- All agents stay in `agents` until the episode ends (a predator on the prey stays, with only "stay" available);
  then every agent is terminated (success) or truncated (step limit) and `agents` becomes empty; call reset().
- Unavailable actions act as "stay", as in the batched env.
- reset(seed) seeds everything; reset() right after an episode ended continues with the episode the batched env
  has already started (drawn from the same generator), so a B=1 batched env and this wrapper, seeded alike and given
  the same actions, play identical episodes.
"""
from __future__ import annotations

import copy
from typing import Any

import gymnasium
import numpy as np
import torch
from pettingzoo import ParallelEnv

from envs.core import Step
from envs.predator_prey import STAY, PredatorCapturePrey, PredatorPrey

__all__ = ["PredatorPreyParallelEnv", "PredatorCapturePreyParallelEnv"]


class _BatchedParallelEnv(ParallelEnv):
    """ParallelEnv over one env of a batched grid env (PredatorPrey / PredatorCapturePrey)."""

    env_class: type = PredatorPrey
    metadata: dict[str, Any] = {"name": "batched", "render_modes": ["ansi", "rgb_array"], "is_parallelizable": True,
                                "render_fps": 4}

    def __init__(self, render_mode: str | None = None, **kwargs: Any):
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode={render_mode!r}; allowed: None or one of {self.metadata['render_modes']}")
        self.render_mode = render_mode
        self.env = self.env_class(num_envs=1, device=torch.device("cpu"), **kwargs)
        spec = self.env.spec
        self.possible_agents: list[str] = list(spec.agent_names)
        self.agents: list[str] = []
        # Own copies, so seeding this env's spaces does not touch the batched env's spec (or another wrapper).
        self.observation_spaces = {a: copy.deepcopy(spec.observation_spaces[a]) for a in self.possible_agents}
        self.action_spaces = {a: copy.deepcopy(spec.action_spaces[a]) for a in self.possible_agents}
        self.state_space = gymnasium.spaces.Box(0.0, float(spec.n_agents), (spec.state_dim,), dtype=np.float32)
        self._last: Step | None = None
        self._continue = False  # the batched env has already started the next episode (after an episode ended)

    def observation_space(self, agent: str) -> gymnasium.spaces.Box:
        """The same Box object for the same agent on every call."""
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> gymnasium.spaces.Discrete:
        """The same Discrete object for the same agent on every call."""
        return self.action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        """Start an episode; `seed` re-seeds the env (None continues its generator). `options` is unused."""
        if seed is not None or not self._continue:
            self._last = self.env.reset(seed=seed)
        self._continue = False
        self.agents = list(self.possible_agents)
        return self._observations(self._last.obs), self._infos(self._last)

    def step(self, actions: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, bool],
                                                     dict[str, bool], dict[str, dict[str, Any]]]:
        """Act for every live agent; returns (observations, rewards, terminations, truncations, infos)."""
        if not self.agents:
            raise RuntimeError("step() with no live agents: the episode ended (or never started); call reset()")
        missing = [a for a in self.agents if a not in actions]
        unknown = [a for a in actions if a not in self.agents]
        if missing or unknown:
            raise ValueError(f"step(): actions for agents {sorted(actions)}; need exactly {self.agents}")
        row = torch.tensor([[int(actions[a]) for a in self.possible_agents]], dtype=torch.long)
        out = self.env.step(row)
        terminated, truncated = bool(out.terminated[0]), bool(out.truncated[0])
        ended = terminated or truncated
        obs = self._observations(out.final_obs if ended else out.obs)
        rewards = {a: float(r) for a, r in zip(self.possible_agents, out.reward[0].tolist())}
        if ended:  # no action follows: only "stay", plus the episode's statistics
            stay = np.zeros(self.env.spec.n_actions, dtype=np.int8)
            stay[STAY] = 1
            episode = {k: float(v[0]) for k, v in out.episode.items()}
            infos = {a: {"action_mask": stay.copy(), "episode": episode} for a in self.possible_agents}
        else:
            infos = self._infos(out)
        terminations = dict.fromkeys(self.agents, terminated)
        truncations = dict.fromkeys(self.agents, truncated)
        self._last = out
        if ended:
            self.agents = []
            self._continue = True
        return obs, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        """The global state [S] f32 (the concatenated padded observations) of the current step."""
        if self._last is None:
            raise RuntimeError("state() before reset()")
        ended = bool(self._last.terminated[0] or self._last.truncated[0])
        return (self._last.final_state if ended else self._last.state)[0].numpy().copy()

    def render(self) -> str | np.ndarray | None:
        """'ansi': the grid as text, one line per row: '.' empty, 'X' prey, 'P' predator(s), 'C' capture agent(s),
        '*' prey with an agent on it. 'rgb_array': [H,W,3] uint8, the grid, prey, vision windows and agents drawn by
        envs.render (no communication edges: this env has no graph; needs the [plot] extra). None without a render
        mode. After an episode ended, both show the next episode's start (the batched env has begun it)."""
        if self.render_mode is None:
            gymnasium.logger.warn("render() without a render_mode: construct with render_mode='ansi' or 'rgb_array'")
            return None
        if self.render_mode == "rgb_array":
            return self.env.render_frame(0)
        dim = self.env.dim
        grid = [["."] * dim for _ in range(dim)]
        for r, c in self.env.predator_pos[0].tolist():
            grid[r][c] = "P"
        for r, c in getattr(self.env, "capture_pos", torch.zeros(1, 0, 2, dtype=torch.long))[0].tolist():
            grid[r][c] = "C"
        r, c = self.env.prey_pos[0].tolist()
        grid[r][c] = "X" if grid[r][c] == "." else "*"
        return "\n".join("".join(line) for line in grid)

    def close(self) -> None:
        self.env.close()

    def _observations(self, obs: torch.Tensor) -> dict[str, np.ndarray]:
        """obs [1,N,O] -> {agent: its observation, cut to its own space's width}."""
        rows = obs[0].numpy()
        return {a: rows[i, : self.observation_spaces[a].shape[0]].copy() for i, a in enumerate(self.possible_agents)}

    def _infos(self, out: Step) -> dict[str, dict[str, Any]]:
        """{agent: {"action_mask": int8 [A]}} of a running episode's step."""
        masks = out.avail_actions[0].to(torch.int8).numpy()
        return {a: {"action_mask": masks[i].copy()} for i, a in enumerate(self.possible_agents)}


class PredatorPreyParallelEnv(_BatchedParallelEnv):
    """Predator-Prey (docs/tasks.md, "Predator-Prey") as a PettingZoo ParallelEnv; defaults: 3 predators, 5x5,
    vision 1, 20 steps."""

    env_class = PredatorPrey
    metadata = {"name": "predator_prey_v0", "render_modes": ["ansi", "rgb_array"], "is_parallelizable": True,
                "render_fps": 4}


class PredatorCapturePreyParallelEnv(_BatchedParallelEnv):
    """Predator-Capture-Prey (docs/tasks.md, "Predator-Capture-Prey") as a PettingZoo ParallelEnv; defaults:
    2 predators + 1 capture agent, 5x5, vision 1, 20 steps."""

    env_class = PredatorCapturePrey
    metadata = {"name": "predator_capture_prey_v0", "render_modes": ["ansi", "rgb_array"], "is_parallelizable": True,
                "render_fps": 4}
