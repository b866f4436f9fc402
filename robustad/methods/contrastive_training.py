"""The training loop of CSI and COBRA, apart from their scoring model.

:class:`ContrastiveTrainer` trains the network of a
:class:`~robustad.methods.contrastive.ShiftedContrastiveDetector`: the training views
(random flip, the K groups, light augmentations), COBRA's three training attacks,
the loss (:mod:`robustad.methods.contrastive_loss`), SGD with warm-up and cosine
decay, and the training-speed switches' code path (autocast, channels-last,
``torch.compile``). It is separate from the detector so the model holds only what
the score and a checkpoint need; ``ShiftedContrastiveDetector.fit`` is the public
entry point and delegates here. The trainer registers nothing on the detector (no
module, buffer or parameter), so state dicts and fit ids are those of the detector
alone; it sets the plain attributes ``loss_history``, ``_speed_notes`` and
``_epochs_trained`` that the detector's ``info`` reads.

Layout of the training batches: the block layout of
:mod:`robustad.methods.contrastive_loss` (a view of B images expanded to its K
groups, group-major; several views concatenated).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustad.methods.base import RunContext
from robustad.methods.contrastive_loss import anchored_nt_xent, cobra_loss, group_derangement
from robustad.methods.training_attacks import pgd_on_loss
from robustad.methods.views import apply_light_aug, sample_light_aug_params

if TYPE_CHECKING:
    from robustad.methods.contrastive import ShiftedContrastiveDetector


class ContrastiveTrainer:
    """Trains one :class:`~robustad.methods.contrastive.ShiftedContrastiveDetector`.

    ``ContrastiveTrainer(detector).fit(data, ctx)`` is what ``detector.fit`` does. The
    training-speed state (autocast dtype, channels-last input, the compiled network)
    lives here for the duration of :meth:`fit` only; outside it (a trainer made to call
    :meth:`expand_and_augment` or :meth:`training_attacks` directly) the network runs
    plain, in float32.
    """

    def __init__(self, detector: ShiftedContrastiveDetector):
        self.detector = detector
        #: autocast dtype of the training forwards (None: float32)
        self.amp_dtype: torch.dtype | None = None
        #: the training input goes channels-last
        self.channels_last = False
        #: ``torch.compile`` of the network for the training forwards (not a registered
        #: submodule of the detector, so it never reaches a state dict)
        self.compiled_net: nn.Module | None = None

    def train_forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The network's forward pass in the training step (loss and training attacks).

        With the switches off (the default, and always off the GPU) it is ``net(x)``.
        With them on, the input goes channels-last, the compiled network runs under
        autocast, and the outputs come back as float32 for the losses.
        """
        det_net = self.detector.net
        dtype = self.amp_dtype
        net = det_net if self.compiled_net is None else self.compiled_net
        if dtype is None and net is det_net and not self.channels_last:
            return det_net(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if dtype is None:
            return net(x)
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            out = net(x)
        return tuple(o.float() for o in out)

    def expand_and_augment(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """One view of a batch: random flip, the K groups, then light augmentations; (K·B,...)."""
        det = self.detector
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
        xk = det.pseudo.expand(x, gen)
        params = sample_light_aug_params(len(xk), gen, crop=det.low_res, min_crop_scale=det.min_crop_scale)
        return apply_light_aug(xk, params)

    # -- training attacks: pgd_on_loss lives in robustad.methods.training_attacks --------
    def training_attacks(
        self, v1: Tensor, v2: Tensor, batch: int, gen: torch.Generator, perm: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """A_P (intra-group), A_N (inter-group) and R (group head), network in eval mode.

        ``v1``, ``v2``: two views in the block layout, (K·B,C,H,W) in [0,1]. ``perm``: the
        group derangement of A_N (drawn from ``gen`` when None). Returns three (K·B,C,H,W)
        tensors inside the ε_train ball of their starting view.
        """
        det = self.detector
        k = det.pseudo.groups
        eps, steps, tau = det.resolved_eps_train(), det.train_attack_steps, det.temperature
        was_training = det.net.training
        det.net.eval()
        for p in det.net.parameters():
            p.requires_grad_(False)
        try:
            # fp16 autocast: the attack losses are scaled so their input gradients do not
            # underflow (a step follows the gradient's sign, which scaling keeps).
            fwd = self.train_forward
            if self.amp_dtype is torch.float16:
                sc = lambda loss: 1024.0 * loss  # noqa: E731
            else:
                sc = lambda loss: loss  # noqa: E731  (the same tensor: float32 unchanged)
            with torch.no_grad():
                z1 = fwd(v1)[1]
                z2 = fwd(v2)[1]
            idx = torch.arange(k * batch, device=v1.device)
            group = idx // batch
            image = idx % batch
            # A_P: from V1, maximise the loss whose positive is the same (image, group) in V2.
            a_p = pgd_on_loss(
                lambda xa: sc(anchored_nt_xent(fwd(xa)[1], z2, idx, tau)), v1, eps, steps, gen, +1
            )
            # A_N: from V2, minimise the loss whose positive is the same image in another
            # group of V1 (a derangement of the groups): pulls each sample to its opposite.
            perm = (group_derangement(k, gen) if perm is None else perm).to(v1.device)
            target_n = perm[group] * batch + image
            a_n = pgd_on_loss(
                lambda xa: sc(anchored_nt_xent(fwd(xa)[1], z1, target_n, tau)), v2, eps, steps, gen, -1
            )
            # R: from V2, maximise the cross entropy of the group head.
            r = pgd_on_loss(
                lambda xa: sc(F.cross_entropy(fwd(xa)[2], group, reduction="none")), v2, eps, steps, gen, +1
            )
        finally:
            for p in det.net.parameters():
                p.requires_grad_(True)
            det.net.train(was_training)
        return a_p, a_n, r

    def training_loss(self, x: Tensor, gen: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """L_COBRA (or CSI's NT-Xent) + L_CLS for one batch (B,C,H,W) in [0,1].

        Returns the loss and its two terms as detached 0-d tensors (``.item()`` reads
        one; not read here, so a GPU step does not wait on the host for them). The
        network runs through :meth:`train_forward` (autocast etc. where switched on);
        the losses are computed in float32.
        """
        det = self.detector
        b, k = len(x), det.pseudo.groups
        v1 = self.expand_and_augment(x, gen)
        v2 = self.expand_and_augment(x, gen)
        group = torch.arange(k, device=x.device).repeat_interleave(b)
        if det.adversarial:
            a_p, a_n, r = self.training_attacks(v1, v2, b, gen)
            _, z, logits = self.train_forward(torch.cat([v1, v2, a_p, a_n, r]))
            z, logits = z[: 4 * k * b], torch.cat([logits[: 2 * k * b], logits[4 * k * b :]])
            blocks = 4
        else:
            _, z, logits = self.train_forward(torch.cat([v1, v2]))
            blocks = 2
        l_con = cobra_loss(z, b, k, blocks, det.temperature, det.opposite_weight)
        l_cls = F.cross_entropy(logits, group.repeat(len(logits) // len(group)))
        return l_con + l_cls, {"contrastive": l_con.detach(), "group_ce": l_cls.detach()}

    def training_subset(self, x: Tensor, seed: int) -> Tensor:
        """``max_train`` images drawn without replacement (seeded), or all of them."""
        max_train = self.detector.max_train
        if max_train is None or len(x) <= max_train:
            return x
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_train]
        return x[idx.sort().values]

    def fit(self, data, ctx: RunContext | None = None) -> ShiftedContrastiveDetector:
        """Train (SGD, momentum 0.9, linear warm-up then cosine decay), then the bank and weights.

        The training images are moved to ``ctx.device`` once, not per batch. The
        training-speed switches (the detector's ``speed_switches``) apply to the
        training steps; the score statistics are computed in float32, in the default
        memory format. Returns the detector, fitted and in eval mode.
        """
        det = self.detector
        ctx = ctx or RunContext()
        x = self.training_subset(data.train_x, ctx.seed)
        det.build(tuple(x.shape[1:]))
        det.to(ctx.device)
        x = x.to(ctx.device)  # resident on the device for the whole fit
        amp_dtype, channels_last, compile_net, det._speed_notes = det.speed_switches(ctx.device)
        if channels_last:
            det.net.to(memory_format=torch.channels_last)
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        if compile_net:
            self.compiled_net = torch.compile(det.net)  # not a registered submodule
        scaler = torch.amp.GradScaler(torch.device(ctx.device).type) if amp_dtype is torch.float16 else None
        try:
            self.train(x, ctx, scaler)
        finally:
            self.amp_dtype, self.channels_last, self.compiled_net = None, False, None
            if channels_last:
                det.net.to(memory_format=torch.contiguous_format)
        det._fit_score_statistics(x, ctx.device)
        det.eval()
        return det

    def train(self, x: Tensor, ctx: RunContext, scaler: torch.amp.GradScaler | None) -> None:
        """The epochs: SGD over ``x`` (on its device), recording the detector's
        ``loss_history`` (mean loss per epoch) and ``_epochs_trained``."""
        det = self.detector
        gen = torch.Generator().manual_seed(ctx.seed)
        opt = torch.optim.SGD(det.net.parameters(), lr=det.lr, momentum=0.9, weight_decay=det.weight_decay)
        bs = min(det.batch_size, len(x))
        steps_per_epoch = max(1, len(x) // bs)  # drop the ragged last batch (BatchNorm, fixed layout)
        epochs = det.epochs

        def schedule(n_epochs: int) -> tuple[int, int]:
            # (total steps, warm-up steps); the warm-up keeps its share of the epochs.
            total = n_epochs * steps_per_epoch
            warmup_epochs = (
                det.warmup_epochs if n_epochs == det.epochs else det.warmup_epochs * n_epochs / det.epochs
            )
            return total, min(total - 1, int(warmup_epochs * steps_per_epoch))

        total, warmup = schedule(epochs)

        def lr_at(step: int) -> float:
            # Linear warm-up, then cosine decay to zero.
            if step < warmup:
                return det.lr * (step + 1) / warmup
            return det.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        det.loss_history = []
        step = 0
        epoch = 0
        while epoch < epochs:
            started = time.perf_counter()
            det.net.train()
            perm = torch.randperm(len(x), generator=gen).to(x.device)
            # float64 on the device: the same sum as adding loss.item() per step on the
            # host, without a device-to-host wait per step
            running = torch.zeros((), dtype=torch.float64, device=x.device)
            for i in range(steps_per_epoch):
                xb = x[perm[i * bs : (i + 1) * bs]]
                for g in opt.param_groups:
                    g["lr"] = lr_at(step)
                loss, _ = self.training_loss(xb, gen)
                opt.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                running += loss.detach().double()
                step += 1
            det.loss_history.append(running.item() / steps_per_epoch)
            epoch += 1
            ctx.report(epoch, epochs, loss=det.loss_history[-1])
            if det.epoch_plan is not None and epoch < epochs:
                planned = max(
                    epoch, min(det.epochs, int(det.epoch_plan(epoch, time.perf_counter() - started)))
                )
                if planned != epochs:
                    epochs = planned
                    total, warmup = schedule(epochs)
        det._epochs_trained = epoch
