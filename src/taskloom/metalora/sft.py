"""Fine-tune the generator through the encoder, on the seen tasks' own objectives (Text-to-LoRA's
"SFT" mode), and score a generator on the val tasks the same way the bench does.

Reconstruction (generator.py) teaches the network to reproduce the seen adapters' ΔW, noise included:
a 20-step adapter is one draw of many that would serve its task. Here the generated ΔW = U·C·Vᵀ is
added to the frozen encoder by forward hooks (x·V·Cᵀ·Uᵀ beside each adapted Linear), and the network
learns from what the adapter is for: each step takes one seen task, a batch of its train rows and its
description (and, half the time, the mean embedding of k of its examples), and descends the task's
loss with the head every method is scored with (label-word prototypes; cosine for similarity pairs).
The val tasks choose how long to train, from none (reconstruction alone) up.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import numpy as np

from taskloom.tasks.types import TASK_TYPES

BATCH = 16
SHOT_SHARE = 0.5  # steps conditioned on k examples as well as the description


class Tuner:
    """The base encoder with the generator's ΔW hooked onto its adapted modules."""

    def __init__(self, tok, model, basis: dict, mean, components, noise: float, shots: tuple[int, ...]):
        import torch

        self.tok, self.model = tok, model
        self.basis = {
            m: (torch.as_tensor(u, dtype=torch.float32), torch.as_tensor(v, dtype=torch.float32))
            for m, (u, v) in basis.items()
        }
        self.modules = sorted(basis)
        self.size = next(iter(self.basis.values()))[0].shape[1]
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.components = torch.as_tensor(components, dtype=torch.float32)
        self.noise, self.shots = noise, shots
        self.cores: dict = {}
        self.frozen = [p for p in model.parameters() if p.requires_grad]
        for p in self.frozen:
            p.requires_grad_(False)
        self.hooks = [model.get_submodule(m).register_forward_hook(self._hook(m)) for m in self.modules]

    def _hook(self, module: str) -> Callable:
        u, v = self.basis[module]

        def add_delta(_mod, inputs, out):
            core = self.cores.get(module)
            return out if core is None else out + ((inputs[0] @ v) @ core.T) @ u.T

        return add_delta

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        for p in self.frozen:
            p.requires_grad_(True)
        self.cores = {}

    def use(self, net, cond: np.ndarray | None) -> None:
        """Hook the ΔW the network makes for `cond` (None: the bare base), with gradients if the caller has them."""
        from taskloom.metalora.generator import predict_cores

        self.cores = (
            {} if cond is None else predict_cores(net, self.mean, self.components, self.modules, self.size, cond)
        )

    def loss(self, spec, rows: list[dict]):
        """The task's objective with the scoring head: prototype cross-entropy, or the pair loss."""
        import torch

        from taskloom.metalora.generate import PROTOTYPE_SCALE, label_text
        from taskloom.models.encoder import encode
        from taskloom.train.lora import DEFAULTS

        kind = TASK_TYPES[spec.type]
        max_length = DEFAULTS["encoder"]["max_length"]  # the length the bank's adapters trained at

        def enc(texts):
            return encode(self.model, self.tok, texts, max_length)

        if not kind.labelled:
            return kind.loss(enc, rows, spec)
        emb = enc([r["text"] for r in rows])
        protos = enc([label_text(lab) for lab in spec.labels])
        gold = torch.tensor([spec.labels.index(r["label"]) for r in rows])
        return torch.nn.functional.cross_entropy(PROTOTYPE_SCALE * emb @ protos.T, gold)

    def fit(self, net, tasks: list, steps: int, lr: float, weight_decay: float, seed: int):
        """A copy of `net` trained `steps` steps on the seen `tasks` (generator._Task with spec and rows)."""
        import torch

        from taskloom.metalora.generator import condition, shot_mean

        net = copy.deepcopy(net)
        if steps == 0:
            return net
        torch.manual_seed(seed)
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        rng = random.Random(seed)
        for _ in range(steps):
            t = rng.choice(tasks)
            batch = rng.sample(t.rows, min(BATCH, len(t.rows)))
            shots = None
            n = len(t.shot_embeddings)
            if rng.random() < SHOT_SHARE and n > max(self.shots):
                idx = rng.sample(range(n), rng.choice(self.shots))
                shots = shot_mean(t.shot_embeddings[idx], [t.shot_labels[i] for i in idx] if t.shot_labels else None)
            cond = condition(t.description, shots)
            noise = np.random.default_rng(rng.getrandbits(32)).normal(0, self.noise, cond.shape).astype(np.float32)
            noise[-1] = 0
            if shots is None:
                noise[len(t.description) : -1] = 0
            self.use(net, cond + noise)
            loss = self.loss(t.spec, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        self.cores = {}
        net.eval()
        return net

    def val_metric(self, net, tasks: list) -> float:
        """Mean metric over `tasks` (val tier) from the description alone, every row of each task scored
        (none of them was trained on), with the head each method gets in the bench."""
        import torch

        from taskloom.metalora.generate import score_with_head
        from taskloom.metalora.generator import condition

        values = []
        with torch.no_grad():
            for t in tasks:
                self.use(net, condition(t.description, None) if net is not None else None)
                values.append(score_with_head(t.spec, self.tok, self.model, t.all_rows, [])["value"])
        self.cores = {}
        return float(np.mean(values))
