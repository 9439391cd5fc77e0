"""The basis' optimizer against torch's SparseAdam, which it must equal bit for bit."""

import torch

from hetrec_dist.train.row_adam import RowSparseAdam


def row_sparse(rows, values, shape):
    indices = torch.tensor(rows, dtype=torch.long)[None]
    return torch.sparse_coo_tensor(indices, values, shape, check_invariants=True).coalesce()


def test_row_sparse_adam_takes_sparse_adams_steps_bit_for_bit_and_shares_its_state(monkeypatch):
    monkeypatch.setenv("HETREC_COMPILED_KERNELS", "0")  # PyTorch's path; test_compiled_kernels has the other
    generator = torch.Generator().manual_seed(0)
    shape = (50, 6)
    start = torch.randn(shape, generator=generator)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    row_adam = RowSparseAdam([ours], lr=1e-2)
    sparse_adam = torch.optim.SparseAdam([theirs], lr=1e-2)
    steps = [[3, 7, 8, 20], [7, 9, 49], [], [0, 3, 7, 8, 20, 31]]  # rows touched at each step, one step none
    for rows in steps:
        values = torch.randn(len(rows), shape[1], generator=generator)
        for parameter, optimizer in ((ours, row_adam), (theirs, sparse_adam)):
            parameter.grad = row_sparse(rows, values, shape)
            optimizer.step()
        assert torch.equal(ours, theirs)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(row_adam.state[ours][key], sparse_adam.state[theirs][key]), key
        assert row_adam.state[ours]["step"] == sparse_adam.state[theirs]["step"]
    assert not torch.equal(ours, start)
    untouched = [row for row in range(shape[0]) if not any(row in rows for rows in steps)]
    assert torch.equal(ours[untouched], start[untouched])
    resumed = RowSparseAdam([start.clone().requires_grad_()], lr=1e-2)
    resumed.load_state_dict(sparse_adam.state_dict())  # a SparseAdam checkpoint
    assert resumed.state_dict()["state"][0]["step"] == len(steps)
