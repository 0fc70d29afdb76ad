"""Every public loss documents its formula, its paper and a short example that runs (as a doctest)."""

from __future__ import annotations

import doctest
import inspect

import pytest
import torch

import cil_losses as L
from cil_losses import nn as LN

#: the public callables whose docstrings carry a runnable example
WITH_EXAMPLES = [
    "balanced_softmax_cross_entropy", "balanced_softmax_offsets", "dakd_loss", "dgr_kd_weight",
    "input_coordination_ce", "jioc_loss", "kd_loss", "logit_adjusted_cross_entropy", "new_head_suppression",
    "output_coordination_kd", "regularized_softmax_offsets", "relaxed_eps_default", "segmented_kd",
    "segmented_log_softmax", "separated_softmax_cross_entropy", "task_wise_kd", "GradientReweighter",
    "less_forget_loss", "lucir_lambda", "margin_ranking_loss", "pod_flat_loss", "pod_spatial_loss", "podnet_lambdas",
    "podnet_nca_loss", "aux_targets", "auxiliary_loss", "effective_number_weights", "logits_alignment_cross_entropy",
    "balanced_kd",
]
#: the paper each loss comes from, as its docstring names it
PAPERS = {
    "balanced_softmax_cross_entropy": "Jodelet", "balanced_softmax_offsets": "Jodelet", "dakd_loss": "CVPR 2024",
    "input_coordination_ce": "IJCAI 2024", "jioc_loss": "IJCAI 2024", "kd_loss": "Hinton",
    "logit_adjusted_cross_entropy": "Menon", "new_head_suppression": "IJCAI 2024",
    "output_coordination_kd": "IJCAI 2024", "regularized_softmax_offsets": "CVPR 2024",
    "separated_softmax_cross_entropy": "ICCV 2021", "task_wise_kd": "ICCV 2021", "GradientReweighter": "CVPR 2024",
    "dgr_kd_weight": "CVPR 2024", "less_forget_loss": "CVPR 2019", "lucir_lambda": "CVPR 2019",
    "margin_ranking_loss": "CVPR 2019", "pod_flat_loss": "ECCV 2020", "pod_spatial_loss": "ECCV 2020",
    "podnet_lambdas": "ECCV 2020", "podnet_nca_loss": "ECCV 2020", "auxiliary_loss": "CVPR 2021",
    "effective_number_weights": "ECCV 2022", "logits_alignment_cross_entropy": "ECCV 2022", "balanced_kd": "ECCV 2022",
}


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_example_runs(name):
    obj = getattr(L, name)
    tests = doctest.DocTestFinder(recurse=False).find(inspect.unwrap(obj), name, globs={})
    examples = [t for t in tests if t.examples]
    assert examples, f"{name} has no doctest example"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    previous = torch.get_default_dtype()
    try:
        for test in examples:
            runner.run(test)
    finally:
        torch.set_default_dtype(previous)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"the example of {name} fails (see the output above)"


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_docstring_names_the_paper(name):
    assert PAPERS[name] in inspect.getdoc(getattr(L, name))


def test_every_public_loss_has_an_example():
    losses = [n for n in L.__all__ if n.endswith(("_loss", "_cross_entropy", "_kd", "_ce", "_suppression"))]
    assert set(losses) <= set(WITH_EXAMPLES), sorted(set(losses) - set(WITH_EXAMPLES))


def test_functional_and_module_forms_are_named_alike():
    """Each nn.Module wrapper names the function it calls in its docstring, and takes the same keywords."""
    pairs = {
        "KDLoss": "kd_loss", "LogitAdjustedCE": "logit_adjusted_cross_entropy",
        "BalancedSoftmaxCE": "balanced_softmax_cross_entropy", "SeparatedSoftmaxCE": "separated_softmax_cross_entropy",
        "TaskWiseKD": "task_wise_kd", "OutputCoordinationKD": "output_coordination_kd", "SegmentedKD": "segmented_kd",
        "InputCoordinationCE": "input_coordination_ce", "NewHeadSuppression": "new_head_suppression",
        "JIOCLoss": "jioc_loss", "DAKDLoss": "dakd_loss",
    }
    assert set(pairs) | {"GradientReweighter"} == set(LN.__all__)
    for module_name, function_name in pairs.items():
        module, function = getattr(LN, module_name), getattr(L, function_name)
        assert function_name in inspect.getdoc(module), module_name
        forward = list(inspect.signature(module.forward).parameters)[1:]
        params = list(inspect.signature(function).parameters)
        assert forward == [p for p in params if p in forward], (module_name, forward, params)
        assert forward[0] == "logits"


def test_keyword_names_are_consistent_across_losses():
    # losses on features or similarities (LUCIR, PODNet) name their first argument for what it is
    allowed_first = {"logits", "features", "cosines", "similarities", "student_maps"}
    for name in L.__all__:
        obj = getattr(L, name)
        if not callable(obj) or isinstance(obj, type) or not name.endswith(("_loss", "_cross_entropy", "_kd", "_ce",
                                                                            "_suppression")):
            continue
        params = list(inspect.signature(obj).parameters)
        assert params[0] in allowed_first, (name, params)
        assert "targets" not in params and "student_logits" not in params, (name, params)
        if "target" in params:
            assert params[1] == "target", (name, params)
        if "teacher_logits" in params:
            assert params[1] == "teacher_logits" or params[2] == "teacher_logits", (name, params)


@pytest.mark.parametrize("call", [
    lambda z, y, t: L.logit_adjusted_cross_entropy(z, targets=y, offsets=torch.zeros(3)),
    lambda z, y, t: L.balanced_softmax_cross_entropy(z, targets=y, class_counts=[1, 2, 3]),
    lambda z, y, t: L.separated_softmax_cross_entropy(z, targets=y, num_old=0, is_replay=None),
    lambda z, y, t: L.input_coordination_ce(z, targets=y),
    lambda z, y, t: L.jioc_loss(z, targets=y, teacher_logits=None, boundaries=[0], is_memory=y > 0),
    lambda z, y, t: L.kd_loss(student_logits=z, teacher_logits=t),
    lambda z, y, t: L.task_wise_kd(student_logits=z, teacher_logits=t, boundaries=[0, 3]),
    lambda z, y, t: L.output_coordination_kd(student_logits=z, teacher_logits=t, boundaries=[0, 3]),
    lambda z, y, t: L.segmented_kd(student_logits=z, teacher_logits=t, boundaries=[0, 3]),
    lambda z, y, t: L.dakd_loss(student_old_logits=z, teacher_logits=t, lost_counts=[1, 2, 3]),
    lambda z, y, t: LN.BalancedSoftmaxCE([1, 2, 3])(z, targets=y),
    lambda z, y, t: LN.KDLoss()(student_logits=z, teacher_logits=t),
])
def test_old_keyword_names_work_for_one_release_with_a_deprecation_warning(call):
    z, y, t = torch.randn(2, 3), torch.tensor([0, 2]), torch.randn(2, 3)
    with pytest.warns(DeprecationWarning, match="deprecated since cil-losses 1.0.0"):
        loss = call(z, y, t)
    assert torch.isfinite(loss)


def test_old_and_new_keyword_together_is_an_error():
    with pytest.raises(L.LossTypeError, match="both 'targets'"):
        L.input_coordination_ce(torch.randn(2, 3), target=torch.tensor([0, 1]), targets=torch.tensor([0, 1]))
