"""The basis' optimizer: torch.optim.SparseAdam's update, computed on the touched rows directly."""

import math

import torch

from hetrec_dist.physics.compiled import kernels_for


class RowSparseAdam(torch.optim.SparseAdam):
    """torch.optim.SparseAdam for gradients sparse in their rows only (a coalesced COO tensor with one sparse
    dimension, as the basis gradient is): the touched rows of the parameter and both moments are gathered,
    updated with SparseAdam's operations in its order, and written back, instead of SparseAdam's sparse_mask
    and sparse additions (tools/bench_row_adam.py times both); bit for bit SparseAdam's steps. On the CPU it
    runs as one compiled loop (physics.compiled) of the same float operations: the moments are still
    SparseAdam's bit for bit, the parameters within a few units in the last place (C's square root is
    correctly rounded, PyTorch's float32 one not always). Its state (step, exp_avg, exp_avg_sq) and state_dict
    are SparseAdam's, so either loads the other's. Any other gradient layout, or maximize, goes to SparseAdam
    itself."""

    @torch.no_grad()
    def step(self, closure=None):
        groups = [(group, [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
        if any(group.get("maximize", False) or any(p.grad.sparse_dim() != 1 or p.grad.dense_dim() != p.dim() - 1
                                                   for p in params) for group, params in groups):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, params in groups:
            for param in params:
                self._update_rows(param, group)
        return loss

    def _update_rows(self, param, group):
        state = self.state[param]
        if len(state) == 0:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        grad = param.grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        if values.numel() == 0:
            return
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        step = state["step"]
        step_size = float(group["lr"]) * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        kernels = kernels_for(param)
        if kernels is not None and all(t.is_contiguous() for t in (param, exp_avg, exp_avg_sq, values)):
            kernels.adam_rows(param, exp_avg, exp_avg_sq, rows.contiguous(), values, (beta1, beta2), group["eps"],
                              step_size)
            return
        old_exp_avg = exp_avg.index_select(0, rows)
        numer = values.sub(old_exp_avg).mul_(1 - beta1).add_(old_exp_avg)
        exp_avg.index_copy_(0, rows, numer)
        old_exp_avg_sq = exp_avg_sq.index_select(0, rows)
        new_exp_avg_sq = values.pow(2).sub_(old_exp_avg_sq).mul_(1 - beta2).add_(old_exp_avg_sq)
        exp_avg_sq.index_copy_(0, rows, new_exp_avg_sq)
        denom = new_exp_avg_sq.sqrt_().add_(group["eps"])
        param.index_copy_(0, rows, param.index_select(0, rows).add_(numer.div_(denom).mul_(-step_size)))
