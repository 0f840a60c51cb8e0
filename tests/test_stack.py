"""The edit stack (stack.py) against a plain reference model of it, written here: random sequences of push,
undo, redo, remove and revert-all (hypothesis), each checked for the weights (to the bit), the active and the
redo lists, and what each call returns.

The deltas hold small integers along unit directions, so every sum of them is exact in float32 and the
expected weight W0 + sum of the active deltas does not depend on the order of the additions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from model_rewrite.errors import IncompatibleEdit, InvalidEdit
from model_rewrite.stack import EditStack
from model_rewrite.update import LowRankDelta

PATHS = ("a.weight", "b.weight")


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3, bias=False)  # (C_out 3, C_in 4): key axis 1
        self.b = nn.Linear(5, 2, bias=False)
        with torch.no_grad():  # exact small values
            self.a.weight.copy_(torch.arange(12.0).reshape(3, 4) / 4)
            self.b.weight.copy_(-torch.arange(10.0).reshape(2, 5) / 8)


def _delta(path: str, seed: int) -> tuple[LowRankDelta, torch.Tensor]:
    """A rank-1 delta on `path` along a unit direction, and its dense form computed here."""
    c_out, c_in = (3, 4) if path == "a.weight" else (2, 5)
    axis = seed % c_in
    dirs = torch.zeros(1, c_in)
    dirs[0, axis] = 1.0
    factor = torch.arange(1.0, c_out + 1).reshape(c_out, 1) * (seed + 1) * (-1) ** seed  # (C_out, r=1)
    dense = torch.zeros(c_out, c_in)
    dense[:, axis] = factor[:, 0]
    return LowRankDelta(path, 1, factor, dirs), dense


class ReferenceStack:
    """What the stack should do, as plain lists of ids."""

    def __init__(self) -> None:
        self.active: list[int] = []
        self.undone: list[int] = []  # the next redo is the last one
        self.next_id = 1

    def push(self) -> int:
        i, self.next_id = self.next_id, self.next_id + 1
        self.active.append(i)
        self.undone.clear()
        return i

    def undo(self) -> int | None:
        if not self.active:
            return None
        self.undone.append(self.active.pop())
        return self.undone[-1]

    def redo(self) -> int | None:
        if not self.undone:
            return None
        self.active.append(self.undone.pop())
        return self.active[-1]

    def remove(self, i: int) -> None:
        self.active.remove(i)

    def revert_all(self) -> None:
        # redo after revert-all re-applies the edits in their original order, the first one first
        self.undone.extend(reversed(self.active))
        self.active.clear()


OPS = st.lists(st.one_of(
    st.tuples(st.just("push"), st.sampled_from(PATHS), st.integers(0, 7)),
    st.tuples(st.just("undo")), st.tuples(st.just("redo")), st.tuples(st.just("revert")),
    st.tuples(st.just("remove"), st.integers(0, 9)),
), max_size=14)


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(OPS)
def test_random_sequences_match_the_reference_stack(ops):
    model = TwoLayers()
    w0 = {p: model.get_parameter(p).detach().clone() for p in PATHS}
    stack, ref = EditStack(model), ReferenceStack()
    dense: dict[int, tuple[str, torch.Tensor]] = {}
    for op in ops:
        if op[0] == "push":
            delta, d = _delta(op[1], op[2])
            entry = stack.push(delta, f"n{op[2]}")
            i = ref.push()
            dense[i] = (op[1], d)
            assert entry.id == i and entry.name == f"n{op[2]}" and entry.delta is delta
        elif op[0] == "undo":
            got, want = stack.undo(), ref.undo()
            assert (got.id if got else None) == want
        elif op[0] == "redo":
            got, want = stack.redo(), ref.redo()
            assert (got.id if got else None) == want
        elif op[0] == "revert":
            stack.revert_all()
            ref.revert_all()
        else:
            if ref.active:
                i = ref.active[op[1] % len(ref.active)]
                assert stack.remove(i).id == i
                ref.remove(i)
            else:
                with pytest.raises(KeyError):
                    stack.remove(op[1] + 1)
        assert [e.id for e in stack.entries] == ref.active
        assert [e.id for e in stack.undone] == ref.undone
        for p in PATHS:
            want = w0[p] + sum((d for i in ref.active for q, d in [dense[i]] if q == p), torch.zeros_like(w0[p]))
            assert torch.equal(model.get_parameter(p).detach(), want), (op, p)


def test_undo_redo_and_names_by_hand():
    model = TwoLayers()
    w0 = model.a.weight.detach().clone()
    stack = EditStack(model)
    (d1, x1), (d2, x2), (d3, x3) = _delta("a.weight", 1), _delta("a.weight", 2), _delta("a.weight", 3)
    e1, e2 = stack.push(d1), stack.push(d2, "second")
    assert (e1.name, e2.name, e1.id, e2.id) == ("edit 1", "second", 1, 2)
    assert stack.undo() is e2 and stack.undo() is e1 and stack.undo() is None
    assert torch.equal(model.a.weight, w0)
    assert stack.redo() is e1  # after two undos, redo re-applies the first edit
    assert torch.equal(model.a.weight, w0 + x1)
    e3 = stack.push(d3)  # a push after an undo drops the redo list
    assert stack.undone == [] and stack.redo() is None and e3.id == 3
    assert torch.equal(model.a.weight, w0 + x1 + x3)
    stack.revert_all()
    assert torch.equal(model.a.weight, w0) and [e.id for e in stack.undone] == [3, 1]
    assert stack.redo() is e1 and stack.redo() is e3 and torch.equal(model.a.weight, w0 + x1 + x3)
    with pytest.raises(KeyError, match="no active edit with id 2"):
        stack.remove(2)


def test_base_weights_are_those_before_the_first_edit_of_each_parameter():
    model = TwoLayers()
    a0, b0 = model.a.weight.detach().clone(), model.b.weight.detach().clone()
    stack = EditStack(model)
    assert torch.equal(stack.base_weight("b.weight"), b0) and stack.base_weights() == {}
    stack.push(_delta("a.weight", 1)[0])
    stack.push(_delta("a.weight", 2)[0])
    assert set(stack.base_weights()) == {"a.weight"} and torch.equal(stack.base_weight("a.weight"), a0)
    base = stack.base_weights()
    base["a.weight"] += 1  # a copy of the dict, but W0 itself is what the stack keeps
    assert "b.weight" not in stack.base_weights()


def test_without_and_lifted_leave_out_edits_inside_and_restore_them_even_on_errors():
    model = TwoLayers()
    a0, b0 = model.a.weight.detach().clone(), model.b.weight.detach().clone()
    stack = EditStack(model)
    (d1, x1), (d2, x2), (d3, y3) = _delta("a.weight", 1), _delta("a.weight", 2), _delta("b.weight", 3)
    e1, e2, e3 = stack.push(d1), stack.push(d2), stack.push(d3)
    with stack.without(e1.id):
        assert torch.equal(model.a.weight, a0 + x2) and torch.equal(model.b.weight, b0 + y3)
        assert [e.id for e in stack.entries] == [2, 3]
    assert [e.id for e in stack.entries] == [1, 2, 3] and torch.equal(model.a.weight, a0 + x1 + x2)
    with pytest.raises(RuntimeError, match="boom"):
        with stack.without(e3.id):
            assert torch.equal(model.b.weight, b0)
            raise RuntimeError("boom")
    assert [e.id for e in stack.entries] == [1, 2, 3] and torch.equal(model.b.weight, b0 + y3)
    with pytest.raises(KeyError, match="no active edit with id 9"):
        with stack.without(9):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with stack.lifted():
            assert torch.equal(model.a.weight, a0) and torch.equal(model.b.weight, b0) and stack.entries == []
            raise RuntimeError("boom")
    assert [e.id for e in stack.entries] == [1, 2, 3]
    assert torch.equal(model.a.weight, a0 + x1 + x2) and torch.equal(model.b.weight, b0 + y3)


def test_push_refuses_foreign_misshapen_and_non_finite_deltas():
    model = TwoLayers()
    stack = EditStack(model)
    d, _ = _delta("a.weight", 1)
    with pytest.raises(IncompatibleEdit, match="no parameter 'c.weight'"):
        stack.push(LowRankDelta("c.weight", 1, d.factor, d.dirs))
    with pytest.raises(IncompatibleEdit, match=r"shape \(3, 4\) but b.weight is \(2, 5\)"):
        stack.push(LowRankDelta("b.weight", 1, d.factor, d.dirs))
    with pytest.raises(InvalidEdit, match="^refusing to apply an edit with NaN or infinite values$"):
        stack.push(LowRankDelta("a.weight", 1, d.factor * float("inf"), d.dirs))
    assert stack.entries == [] and stack.base_weights() == {}


def test_entries_keep_their_spec_and_deltas_are_added_in_the_weights_dtype():
    from helpers import box_mask

    from model_rewrite.edits import EditSpec, Selection

    model = TwoLayers()
    stack = EditStack(model)
    spec = EditSpec("m", "f", "a", Selection(0, box_mask(4, 0, 2, 0, 2)))
    d, _ = _delta("a.weight", 1)
    assert stack.push(d, "x", spec).spec is spec and stack.push(d).spec is None
    # a float64 delta on a float32 weight is rounded to float32 first, then added: 1 + 2^-24 rounds (to even)
    # to 1, whereas adding the float64 value 2^-24 + 2^-50 and rounding the sum would give 1 + 2^-23
    with torch.no_grad():
        model.b.weight.fill_(1.0)
    stack = EditStack(model)
    dirs = torch.zeros(1, 5, dtype=torch.float64)
    dirs[0, 0] = 1.0
    factor = torch.full((2, 1), 2.0**-24 + 2.0**-50, dtype=torch.float64)
    stack.push(LowRankDelta("b.weight", 1, factor, dirs))
    assert model.b.weight.dtype == torch.float32 and bool((model.b.weight == 1.0).all())


def test_a_trial_puts_back_entries_redo_list_ids_weights_and_the_weights_version():
    model = TwoLayers()
    stack = EditStack(model)
    w0 = model.a.weight.detach().clone()
    first = stack.push(_delta("a.weight", 1)[0], "first")
    second = stack.push(_delta("a.weight", 2)[0], "second")
    stack.undo()
    w1, version = model.a.weight.detach().clone(), stack.version
    seen = {version}
    with stack.trial():
        preview = stack.push(_delta("a.weight", 3)[0], "preview")
        assert preview.id == 3 and stack.undone == []  # inside, a push is a push
        assert stack.version not in seen  # the previewed weights get a name of their own
        seen.add(stack.version)
    assert [e.id for e in stack.entries] == [first.id] and [e.id for e in stack.undone] == [second.id]
    assert torch.equal(model.a.weight, w1) and stack.version == version  # the same weights, the same name
    with stack.trial():
        stack.push(_delta("a.weight", 4)[0], "another preview")
        assert stack.version not in seen  # never the name of the first preview's weights
    assert stack.push(_delta("a.weight", 5)[0]).id == 3  # the ids the trials used are free again
    assert stack.version not in seen
    stack.revert_all()
    assert torch.equal(model.a.weight, w0)


def test_a_batch_undoes_and_redoes_as_one_and_replace_keeps_its_place():
    model = TwoLayers()
    stack = EditStack(model)
    w0a, w0b = model.a.weight.detach().clone(), model.b.weight.detach().clone()
    (d1, x1), (d2, x2), (d3, x3), (d4, x4) = (_delta("a.weight", 1), _delta("b.weight", 2), _delta("a.weight", 3),
                                              _delta("b.weight", 4))
    alone = stack.push(d1, "alone")
    pair = stack.push_many([(d2, "two", ()), (d3, "three", ())])
    assert [e.id for e in pair] == [2, 3] and pair[0].batch == pair[1].batch != 0 and alone.batch == 0
    assert [e.name for e in pair] == ["two", "three"] and alone.members == () and pair[0].members == ()
    assert torch.equal(model.a.weight, w0a + x1 + x3) and torch.equal(model.b.weight, w0b + x2)
    assert stack.undo().id == 2 and [e.id for e in stack.entries] == [1]  # the whole batch, last one first
    assert [e.id for e in stack.undone] == [3, 2] and torch.equal(model.a.weight, w0a + x1)
    assert torch.equal(model.b.weight, w0b)
    assert stack.redo().id == 3 and [e.id for e in stack.entries] == [1, 2, 3] and stack.undone == []
    assert torch.equal(model.a.weight, w0a + x1 + x3) and torch.equal(model.b.weight, w0b + x2)
    again = stack.push_many([(d4, "four", ()), (d2, "five", ())])  # a second batch gets its own number
    assert again[0].batch == again[1].batch not in (0, pair[0].batch)
    single = stack.push_many([(d4, "six", ())])  # one entry is no batch
    assert single[0].batch == 0
    new = stack.replace(2, d4, "two'")  # a new id in the old place and batch, weights recomputed in order
    assert [e.id for e in stack.entries] == [1, new.id, 3, 4, 5, 6] and new.batch == pair[0].batch
    assert new.name == "two'" and new.members == ()
    assert torch.equal(model.b.weight, w0b + x4 + x4 + x2 + x4) and stack.undone == []
    with pytest.raises(KeyError, match="no active edit with id 99"):
        stack.replace(99, d4, "x")


def test_every_change_of_the_weights_gets_a_new_version():
    stack = EditStack(TwoLayers())
    seen = [stack.version]
    stack.push(_delta("a.weight", 1)[0])
    seen.append(stack.version)
    stack.push(_delta("b.weight", 2)[0])
    seen.append(stack.version)
    stack.undo()
    seen.append(stack.version)
    stack.redo()
    seen.append(stack.version)
    assert len(set(seen)) == len(seen), seen
