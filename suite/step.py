"""One optimizer step of a cell, on the fastest path the device has.

    loss = CE(model(tokens), targets)  (target tokens only)
    g = clip(grad loss, 1.0);  AdamW(0.9, 0.99, no weight decay) at the scheduled rate

CPU: eager PyTorch, the same on every call (a seed repeats bit for bit on one machine).

CUDA: bf16 autocast, fused AdamW whose state and learning rate live on the device, gradient
clipping with no host round trip, and the whole step (forward, loss, backward, clipping,
update) captured in a CUDA graph once per batch shape, after a few eager steps, and replayed
from then on: one launch per step instead of hundreds. The model is compiled with
``torch.compile`` before the capture (the fused kernels are ``torch.library`` operators and
softmax with ALiBi is FlexAttention, so the model is one graph; compilation fuses the norms,
activations and casts around the matmuls). The settings ``step.compile`` and
``step.cuda_graphs`` (``suite.settings``) turn either off. A model that does not compile, or a
step whose capture fails, trains eagerly, with a warning.

The loss stays on the device: ``flush()`` returns the losses of the steps since the last flush
in one transfer, so the trainer reads them (and checks them for NaN, naming the step) every
few steps instead of waiting on every step.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from . import settings

#: eager steps of a batch shape before its step is captured (allocator and optimizer state
#: settle, compilation happens)
WARMUP = 3


class Stepper:
    def __init__(self, model: torch.nn.Module, lr: float, device: torch.device,
                 graphs: bool | None = None, compile: bool | None = None):
        self.model, self.device = model, torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.params = [p for p in model.parameters() if p.requires_grad]
        if self.cuda:
            self.lr = torch.tensor(float(lr), device=self.device)  # read by the fused update
            self.opt = torch.optim.AdamW(self.params, lr=self.lr, betas=(0.9, 0.99),
                                         weight_decay=0.0, fused=True, capturable=True)
        else:
            self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.99),
                                         weight_decay=0.0)
        step = settings.current().step
        graphs = step.cuda_graphs if graphs is None else graphs
        self.graphs_on = bool(graphs) and self.cuda
        compile = step.compile if compile is None else compile
        self.forward = torch.compile(model) if (compile and self.cuda) else model
        self._primed: set[tuple] = set()  # batch shapes the compiled forward has met
        self._graphs: dict[tuple, tuple | None] = {}  # shape -> (graph, tokens, targets, loss)
        self._warm: dict[tuple, int] = {}
        self._losses: list[torch.Tensor] = []

    # ------------------------------------------------------------ the step

    def set_lr(self, lr: float) -> None:
        if self.cuda:
            self.lr.fill_(lr)
        else:
            for group in self.opt.param_groups:
                group["lr"] = lr

    def _loss(self, tokens, targets):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda,
                            cache_enabled=False):
            if self.forward is not self.model and tuple(tokens.shape) not in self._primed:
                # one eager call at this shape picks the kernels the trace reuses (the backend
                # can depend on the length: softmax under NAPE on CUDA), right before the
                # compiler meets the shape; not whatever a validation at another length chose
                with torch.no_grad():
                    self.model(tokens)
                self._primed.add(tuple(tokens.shape))
                try:
                    logits = self.forward(tokens)  # (B, T, V), compiled at a new shape
                except Exception as err:  # a model the compiler cannot take still trains
                    warnings.warn(f"torch.compile of the model failed ({type(err).__name__}: "
                                  f"{str(err)[:200]}); training it uncompiled", stacklevel=2)
                    self.forward = self.model
                    logits = self.model(tokens)
            else:
                logits = self.forward(tokens)  # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                               ignore_index=-100)

    def _update(self, loss) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0, foreach=True if self.cuda else None)
        self.opt.step()

    def _eager(self, tokens, targets) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss(tokens, targets)
        self._update(loss)
        return loss.detach()

    def step(self, tokens: torch.Tensor, targets: torch.Tensor) -> None:
        """One optimizer step on a batch (CPU tensors, pinned on CUDA, or device tensors)."""
        if not self.graphs_on:
            tokens = tokens.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            self._losses.append(self._eager(tokens, targets))
            return
        shape = tuple(tokens.shape)
        entry = self._graphs.get(shape)
        if entry is None and shape not in self._graphs:
            if self._warm.get(shape, 0) < WARMUP:
                self._warm[shape] = self._warm.get(shape, 0) + 1
                self._losses.append(self._side_stream_step(tokens, targets))
                return
            entry = self._capture(tokens, targets)
            self._graphs[shape] = entry
            if entry is not None:
                self._losses.append(entry[3].clone())  # the captured step ran this batch
                return
        if entry is None:  # capture failed for this shape: eager
            self._losses.append(self._eager(tokens.to(self.device, non_blocking=True),
                                            targets.to(self.device, non_blocking=True)))
            return
        graph, tok, tgt, loss = entry
        tok.copy_(tokens, non_blocking=True)
        tgt.copy_(targets, non_blocking=True)
        graph.replay()
        self._losses.append(loss.clone())

    def _side_stream_step(self, tokens, targets) -> torch.Tensor:
        """An eager step on a side stream (how a step is warmed up before its capture)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            loss = self._eager(tokens.to(self.device, non_blocking=True),
                               targets.to(self.device, non_blocking=True))
        torch.cuda.current_stream(self.device).wait_stream(side)
        return loss

    def _capture(self, tokens, targets):
        """Capture the step for this batch shape and run it once on this batch; None when the
        capture fails (the batch is then stepped eagerly by the caller)."""
        tok = torch.empty(tokens.shape, dtype=tokens.dtype, device=self.device)
        tgt = torch.empty(targets.shape, dtype=targets.dtype, device=self.device)
        tok.copy_(tokens, non_blocking=True)
        tgt.copy_(targets, non_blocking=True)
        graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph):
                loss = self._loss(tok, tgt)
                self._update(loss)
        except Exception as err:  # a path that cannot be captured still trains, eagerly
            warnings.warn(f"CUDA graph capture of the training step failed "
                          f"({type(err).__name__}: {err}); this shape runs eagerly",
                          stacklevel=2)
            torch.cuda.synchronize(self.device)
            self.opt.zero_grad(set_to_none=True)
            return None
        graph.replay()
        return graph, tok, tgt, loss

    # ------------------------------------------------------------ reading the losses

    def flush(self) -> list[float]:
        """The losses of the steps since the last flush, in order (one device transfer)."""
        if not self._losses:
            return []
        values = torch.stack(self._losses).float().cpu().tolist()
        self._losses.clear()
        return values

    @property
    def captured(self) -> int:
        """How many batch shapes run as a CUDA graph."""
        return sum(entry is not None for entry in self._graphs.values())
