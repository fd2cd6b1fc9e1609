"""Rollout storage [T,B,N,...] (with the sampled graphs and gates) and its collection from a VecEnv.

T rollout length, B envs, N agents, O obs width, A actions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from commformer.method.policy import Agent
from envs.core import Step, VecEnv


@dataclass
class Rollout:
    """One rollout. Values are in the value normaliser's units, except final_values / last_values (raw)."""

    obs: Tensor  # [T,B,N,O] f32
    avail: Tensor  # [T,B,N,A] bool
    alive: Tensor  # [T,B,N] bool
    active: Tensor  # [T,B,N] bool
    actions: Tensor  # [T,B,N] long
    log_prob: Tensor  # [T,B,N] f32
    values: Tensor  # [T,B,N] f32 (normalised)
    rewards: Tensor  # [T,B,N] f32
    terminated: Tensor  # [T,B] bool
    truncated: Tensor  # [T,B] bool
    graph: Tensor  # [T,B,N,N] bool, acting graph
    noise: Tensor  # [T,B,N,N] f32, its Gumbel noise
    gate: Optional[Tensor]  # [T,B,N] bool or None
    final_values: Tensor  # [T,B,N] f32 raw V(final_obs_t) where truncated_t, else 0
    last_values: Tensor  # [B,N] f32 raw V(obs_T)

    @staticmethod
    def allocate(T: int, B: int, N: int, O: int, A: int, gate: bool, device: torch.device) -> "Rollout":
        f32, b = dict(device=device), dict(device=device, dtype=torch.bool)
        return Rollout(
            obs=torch.zeros(T, B, N, O, **f32), avail=torch.zeros(T, B, N, A, **b),
            alive=torch.zeros(T, B, N, **b), active=torch.zeros(T, B, N, **b),
            actions=torch.zeros(T, B, N, dtype=torch.long, device=device), log_prob=torch.zeros(T, B, N, **f32),
            values=torch.zeros(T, B, N, **f32), rewards=torch.zeros(T, B, N, **f32),
            terminated=torch.zeros(T, B, **b), truncated=torch.zeros(T, B, **b),
            graph=torch.zeros(T, B, N, N, **b), noise=torch.zeros(T, B, N, N, **f32),
            gate=torch.zeros(T, B, N, **b) if gate else None,
            final_values=torch.zeros(T, B, N, **f32), last_values=torch.zeros(B, N, **f32),
        )

    def next_values(self, denormalize: Callable[[Tensor], Tensor]) -> Tensor:
        """[T,B,N] raw: V(final_obs_t) where truncated_t, else V(obs_{t+1}) (V(obs_T) = last_values)."""
        raw = denormalize(self.values)
        nxt = torch.cat([raw[1:], self.last_values[None]], dim=0)
        return torch.where(self.truncated[..., None], self.final_values, nxt)


class Collector:
    """Steps a VecEnv with an Agent and fills a Rollout; keeps the env's current Step between rollouts."""

    def __init__(self, env: VecEnv, T: int, gate: bool, device: torch.device,
                 generator: torch.Generator) -> None:
        self.env, self.T, self.device, self.generator = env, T, device, generator
        s = env.spec
        self.buf = Rollout.allocate(T, env.num_envs, s.n_agents, s.obs_dim, s.n_actions, gate, device)
        self.current: Optional[Step] = None
        self.finished: list[dict[str, Tensor]] = []  # episode stats of envs that finished, per step

    def reset(self, seed: int) -> None:
        self.current = self.env.reset(seed=seed).to(self.device)

    @torch.no_grad()
    def collect(self, agent: Agent, graph_how: str, gate_how: str,
                denormalize: Callable[[Tensor], Tensor]) -> Rollout:
        """Fill the buffer with T steps. Finished episodes' stats are appended to self.finished."""
        assert self.current is not None, "Collector.reset() first"
        buf, cur, g = self.buf, self.current, self.generator
        buf.final_values.zero_()
        # the fused weights once, and the rollout's randomness in one draw where the stream allows it (the same
        # decisions as drawing it step by step)
        plan = agent.plan_rollout(self.T, self.env.num_envs, graph_how, gate_how, g)
        draws = plan.draws
        if draws is not None:
            buf.graph.copy_(draws.hard)
            buf.noise.copy_(draws.noise)
        # V(final_obs) of truncated envs: computed in one pass after the loop unless computing it draws from the
        # generator (a sampled gate), which must then happen in step order
        deferred = draws is not None
        finals: list[tuple[int, Tensor, Tensor, Tensor, Tensor]] = []  # (t, env index, final obs, alive, graph)
        same_device = self.env.device == self.device
        for t in range(self.T):
            out = agent.act(cur.obs, cur.avail_actions, cur.alive, graph_how, gate_how, g, plan=plan, t=t)
            buf.obs[t] = cur.obs
            buf.avail[t] = cur.avail_actions
            buf.alive[t] = cur.alive
            buf.active[t] = cur.active
            buf.actions[t] = out.actions
            buf.log_prob[t] = out.log_prob
            buf.values[t] = out.value
            if draws is None:
                buf.graph[t] = out.graph
                buf.noise[t] = out.noise
            if buf.gate is not None:
                buf.gate[t] = out.gate
            nxt = self.env.step(out.actions if same_device else out.actions.to(self.env.device))
            if not same_device:
                nxt = nxt.to(self.device)
            buf.rewards[t] = nxt.reward
            buf.terminated[t] = nxt.terminated
            buf.truncated[t] = nxt.truncated
            if bool(nxt.truncated.any()):
                if deferred:
                    idx = nxt.truncated.nonzero()[:, 0]
                    finals.append((t, idx, nxt.final_obs[idx], nxt.final_alive[idx], out.graph[idx]))
                else:
                    v = agent.value(nxt.final_obs, nxt.final_alive, out.graph, gate_how, g, plan)
                    buf.final_values[t] = torch.where(nxt.truncated[:, None], denormalize(v), 0.0)
            done = nxt.done
            if bool(done.any()):
                self.finished.append({k: v[done] for k, v in nxt.episode.items()})
            cur = nxt
        self.current = cur
        last_hard, _ = agent.pick_graph(cur.obs.shape[0], graph_how, g)
        if not finals:
            buf.last_values = denormalize(agent.value(cur.obs, cur.alive, last_hard, gate_how, g, plan))
            return buf
        # one pass over every truncated env's final observation and the last observation
        ts = torch.cat([torch.full_like(f[1], f[0]) for f in finals])
        idx = torch.cat([f[1] for f in finals])
        v = denormalize(agent.value(torch.cat([f[2] for f in finals] + [cur.obs]),
                                    torch.cat([f[3] for f in finals] + [cur.alive]),
                                    torch.cat([f[4] for f in finals] + [last_hard]), gate_how, g, plan))
        buf.final_values[ts, idx] = v[: idx.shape[0]]
        buf.last_values = v[idx.shape[0]:]
        return buf

    def pop_finished(self) -> dict[str, Tensor]:
        """Concatenated stats of the episodes finished since the last call (each [E] f32)."""
        if not self.finished:
            return {}
        keys = self.finished[0].keys()
        out = {k: torch.cat([f[k].float() for f in self.finished]) for k in keys}
        self.finished = []
        return out
