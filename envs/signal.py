"""Signal game: a one-step referential task where each receiver needs exactly one other agent's information.

Agent j observes the one-hot of its own secret symbol s_j (uniform in 0..n_symbols-1), followed by the one-hot of
its own index when `agent_ids` is on (so a receiver can tell whose information reached it). Agent i is paid 1 for
answering the secret of its source agent (i + shift) mod N, 0 otherwise. Only that source carries what receiver i
needs, so a learned communication graph with one sender per row should pick the permutation i -> (i + shift) mod N.
Episodes last one step and terminate. Task metric "success": every agent answered correctly.
"""
from __future__ import annotations

import gymnasium
import torch
from torch import Tensor

from envs.core import EnvConfigError, EnvSpec, FamilyInfo, Step, check_actions


class SignalGame(FamilyInfo):
    def __init__(self, num_envs: int, device: torch.device | str = "cpu", n_agents: int = 3, n_symbols: int = 4,
                 shift: int = 1, agent_ids: bool = True) -> None:
        if n_agents < 2:
            raise EnvConfigError(f"env.n_agents={n_agents}; must be >= 2")
        if n_symbols < 2:
            raise EnvConfigError(f"env.n_symbols={n_symbols}; must be >= 2")
        if shift % n_agents == 0:
            raise EnvConfigError(f"env.shift={shift}; must not be a multiple of env.n_agents={n_agents} "
                                 "(the source would be the receiver itself)")
        self.num_envs, self.device = num_envs, torch.device(device)
        self.n_symbols, self.agent_ids = n_symbols, agent_ids
        obs_dim = n_symbols + (n_agents if agent_ids else 0)
        names = tuple(f"agent_{i}" for i in range(n_agents))
        obs_space = gymnasium.spaces.Box(0.0, 1.0, (obs_dim,))
        act_space = gymnasium.spaces.Discrete(n_symbols)
        self.spec = EnvSpec(n_agents, obs_dim, n_agents * obs_dim, n_symbols, 1, names,
                            {n: obs_space for n in names}, {n: act_space for n in names}, ("success",))
        self.source = (torch.arange(n_agents, device=self.device) + shift) % n_agents  # [N]
        self.generator = torch.Generator(self.device)
        self.secrets = torch.zeros(num_envs, n_agents, dtype=torch.long, device=self.device)

    def _draw(self) -> None:
        self.secrets = torch.randint(0, self.n_symbols, self.secrets.shape, generator=self.generator,
                                     device=self.device)

    def _obs(self) -> Tensor:
        """[B,N,O]: one-hot secret (+ one-hot agent index)."""
        obs = torch.nn.functional.one_hot(self.secrets, self.n_symbols).float()
        if self.agent_ids:
            B, N = self.secrets.shape
            ids = torch.eye(N, device=self.device).expand(B, N, N)
            obs = torch.cat([obs, ids], dim=-1)
        return obs

    def _observe(self, reward: Tensor, done: Tensor, final_obs: Tensor | None, episode: dict[str, Tensor]) -> Step:
        B, N = self.secrets.shape
        obs = self._obs()
        ones = torch.ones(B, N, dtype=torch.bool, device=self.device)
        fo = obs if final_obs is None else final_obs
        return Step(obs=obs, state=obs.reshape(B, -1), avail_actions=torch.ones(B, N, self.n_symbols,
                    dtype=torch.bool, device=self.device), reward=reward, terminated=done,
                    truncated=torch.zeros_like(done), alive=ones, active=ones, final_obs=fo,
                    final_state=fo.reshape(B, -1), final_alive=ones, episode=episode)

    def reset(self, seed: int | None = None) -> Step:
        if seed is not None:
            self.generator.manual_seed(seed)
        self._draw()
        B, N = self.secrets.shape
        zeros = torch.zeros(B, dtype=torch.float32, device=self.device)
        episode = {"return": zeros, "length": zeros, "success": zeros}
        return self._observe(torch.zeros(B, N, device=self.device), torch.zeros(B, dtype=torch.bool,
                             device=self.device), None, episode)

    def step(self, actions: Tensor) -> Step:
        """actions [B,N] long -> reward [B,N] = 1 where a_i == s_{source(i)}; every env terminates and resets."""
        check_actions(actions, self.num_envs, self.spec.n_agents)
        target = self.secrets[:, self.source]
        reward = (actions.to(self.device) == target).float()
        final_obs = self._obs()
        B = self.num_envs
        episode = {"return": reward.mean(-1), "length": torch.ones(B, device=self.device),
                   "success": reward.min(-1).values}
        self._draw()
        return self._observe(reward, torch.ones(B, dtype=torch.bool, device=self.device), final_obs, episode)

    def close(self) -> None:
        pass

    def state_dict(self) -> dict[str, Tensor]:
        return {"secrets": self.secrets.clone(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.secrets = state["secrets"].to(self.device)
        self.generator.set_state(state["generator"])
