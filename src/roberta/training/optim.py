"""AdamW with the paper's settings, the linear warmup/decay schedule, and lr scaling rules."""

from __future__ import annotations

import math

import torch

from roberta.config import Config, OptimConfig, parse_duration

# The paper's own (batch size, peak lr) pairs for BERT-base-sized models (Liu et al. 2019, Table 3).
PAPER_LR_TABLE = {256: 1e-4, 2048: 7e-4, 8192: 1e-3}


def paper_lr(batch_size: int) -> float:
    """The paper's table, log-log interpolated between its points (clamped outside them)."""
    pts = sorted(PAPER_LR_TABLE.items())
    if batch_size <= pts[0][0]:
        return pts[0][1]
    for (b0, l0), (b1, l1) in zip(pts, pts[1:]):
        if batch_size <= b1:
            t = math.log(batch_size / b0) / math.log(b1 / b0)
            return math.exp(math.log(l0) + t * math.log(l1 / l0))
    return pts[-1][1]


def lr_at(progress: float, warmup: float, peak: float, schedule: str = "linear", decay: float = 0.2) -> float:
    """The lr at `progress`, the used fraction of whichever budget is set (steps, tokens or time;
    with a step budget, progress = step / max_steps gives the usual per-step schedule). Every
    schedule reaches 0 at progress 1:
    - linear: warmup to `peak` over the first `warmup` fraction, then linear decay (the paper's);
    - one-cycle: a triangle peaking at half the budget (Cramming's simplified one-cycle; no warmup key);
    - wsd: warmup, then `peak` held, then linear decay over the final `decay` fraction
      (warmup-stable-decay, ModernBERT's)."""
    if progress >= 1.0:
        return 0.0
    if schedule == "one-cycle":
        return peak * (progress / 0.5 if progress < 0.5 else (1.0 - progress) / 0.5)
    if warmup > 0 and progress < warmup:
        return peak * progress / warmup
    if schedule == "wsd":
        return peak if progress < 1.0 - decay else peak * (1.0 - progress) / decay
    return peak * (1.0 - progress) / (1.0 - warmup)


def param_groups(model: torch.nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """fairseq decays every parameter; HF excludes biases and LayerNorm weights (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class StableAdamW(torch.optim.Optimizer):
    """AdamW with update clipping per tensor (Wortsman et al. 2023, "Stable and low-precision training
    for large-scale vision-language models"; ModernBERT's optimizer): each tensor's step, weight
    decay included, is divided by max(1, RMS(g^2 / v_hat)). While the second-moment estimate
    v_hat keeps up with the gradients the ratio is about 1 and this is AdamW; a gradient that
    outruns it (a spike, or a stale v_hat at a high lr) takes a step no larger than AdamW's
    typical one. It replaces gradient clipping. No host sync: the ratio stays on the device."""

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float, weight_decay: float):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            (b1, b2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                t += 1
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                v_hat = v / (1 - b2 ** t)
                rms = (g.square() / v_hat.clamp(min=eps * eps)).mean().sqrt()
                step_lr = lr / rms.clamp(min=1.0)
                p.mul_(1 - step_lr * wd)
                p.sub_(step_lr * (m / (1 - b1 ** t)) / (v_hat.sqrt() + eps))


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """optim.name: AdamW with the fused kernel (one pass over each tensor) on CUDA and CPU (on this
    project's CPU a quarter of the time of the default multi-tensor path), or StableAdamW."""
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    if cfg.name == "stableadamw":
        return StableAdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)
    fused = next(model.parameters()).device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=lr,
                             betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused or None)


def step_if_finite(optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> None:
    """optimizer.step() unless `finite` (a 0-d bool tensor) is False. With the fused AdamW the
    decision stays on the device, as torch.amp.GradScaler's does: the kernel skips the update
    (and the step count) when found_inf is set, and the host never waits. Otherwise it is read."""
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = (~finite).float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif bool(finite):
        optimizer.step()


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class Budget:
    """Which budget ends the run and how far along it is (0..1): the largest used fraction of
    the token and time budgets when either is set, else steps. The lr schedule runs on this
    fraction, so a time budget decays the lr to 0 at the deadline. `s` is the trainer's
    TrainState (step, tokens, elapsed)."""

    def __init__(self, cfg: Config):
        t = cfg.train
        self.max_steps, self.max_tokens = t.max_steps, t.max_tokens
        self.max_time = parse_duration(t.max_time) if t.max_time else 0.0
        steps_est = self.max_steps
        if self.max_tokens:
            steps_est = max(1, math.ceil(self.max_tokens / (t.batch_size * cfg.data.seq_len)))
        # warmup_steps is a fraction of the (estimated) steps; a time budget has no step count
        self.warmup = (t.warmup_steps / steps_est) if (t.warmup_steps and not self.max_time) else t.warmup_fraction
        self.warmup = min(self.warmup, 0.999)
        self.steps_estimate = None if self.max_time else steps_est
        self.schedule, self.decay = t.schedule, t.decay_fraction

    def progress(self, s) -> float:
        if self.max_tokens or self.max_time:
            p = [s.tokens / self.max_tokens] if self.max_tokens else []
            p += [s.elapsed / self.max_time] if self.max_time else []
            return max(p)
        return s.step / self.max_steps

    def done(self, s) -> bool:
        return self.progress(s) >= 1.0

    def lr(self, s, peak: float) -> float:
        """The scheduled lr at the run's current progress."""
        return lr_at(self.progress(s), self.warmup, peak, self.schedule, self.decay)

    def bar(self) -> tuple[int, str]:
        """The progress bar's total and unit: steps under a step budget; percent of the budget
        under a token or time budget, whose step count is only an estimate."""
        return (self.max_steps, "step") if not (self.max_tokens or self.max_time) else (100, "%")

    def bar_position(self, s) -> float:
        return s.step if not (self.max_tokens or self.max_time) else round(min(self.progress(s), 1.0) * 100, 1)
