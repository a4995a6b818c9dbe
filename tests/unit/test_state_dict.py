"""The one weights check every loader uses: keys and shapes, named before anything loads."""

import pytest
import torch

from videoldm_core.state_dict import check_weights, weight_mismatch


def test_matching_weights_pass_and_every_kind_of_mismatch_is_named():
    expected = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "b.logit_scale": torch.zeros(())}
    assert weight_mismatch(expected, {k: v.clone() for k, v in expected.items()}) == ""
    found = {"a.weight": torch.zeros(3, 2), "c": torch.zeros(1)}
    with pytest.raises(LookupError, match=r"^x.safetensors: the weights do not match: 2 missing \(e.g. \['a.bias', "
                                       r"'b.logit_scale'\]\); 1 unexpected \(e.g. \['c'\]\); 1 with the wrong shape "
                                       r"\(e.g. a.weight: expected \(2, 3\), found \(3, 2\)\)\.$"):
        check_weights(expected, found, "x.safetensors: the weights do not match", LookupError)


def test_keys_a_format_never_stores_may_be_absent():
    expected = {"a": torch.zeros(1), "text.logit_scale": torch.zeros(())}
    assert weight_mismatch(expected, {"a": torch.ones(1)}, ignore_missing=(".logit_scale",)) == ""
    assert "1 missing" in weight_mismatch(expected, {"text.logit_scale": torch.ones(())}, ignore_missing=(".logit_scale",))
