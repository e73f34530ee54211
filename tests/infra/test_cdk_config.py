"""CDK context: validated once into StackConfig; command-line values arrive as text."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.infra, pytest.mark.usefixtures("cdk")]


def config_of(context: dict[str, Any]) -> Any:
    from aws_cdk import App
    from textnlp_cdk.config import StackConfig

    return StackConfig.from_node(App(context=context).node)


@pytest.mark.parametrize(
    "context",
    [
        {"stage": "qa"},
        {"batch_size": 11},
        {"batch_max_concurrency": 1},
        {"sagemaker_size": "huge"},
        {"sagemaker_size": "small", "sagemaker_container": "vllm", "sagemaker_hf_model_id": "m"},
        {"sagemaker_size": "small"},  # no model: neither model data nor a Hugging Face id
    ],
)
def test_bad_context_is_refused(context: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"context|sagemaker"):
        config_of(context)


def test_context_from_the_command_line_is_text() -> None:
    config = config_of({"batch_size": "3", "sagemaker_endpoint_names": "Llama-A, llama-b"})
    assert config.batch_size == 3
    assert config.endpoint_names == ("Llama-A", "llama-b")
    from textnlp_cdk.access import endpoint_arns

    assert all(arn.endswith(("endpoint/llama-a", "endpoint/llama-b")) for arn in endpoint_arns(config.endpoint_names))


def test_named_endpoints_still_let_the_functions_call_fine_tuned_models() -> None:
    from textnlp_cdk.access import invoke_arns

    named = invoke_arns(("Llama-A",))
    assert [arn.rsplit(":", 1)[-1] for arn in named] == ["endpoint/llama-a", "endpoint/textnlp-ftjob-*"]
    assert [arn.rsplit(":", 1)[-1] for arn in invoke_arns(())] == ["endpoint/textnlp-*"]


def test_lmi_container_environment() -> None:
    from textnlp_cdk.config import SageMakerSettings
    from textnlp_cdk.sagemaker_endpoint import container_environment

    settings = SageMakerSettings("large", "lmi", None, "s3://bucket/models/m/model.tar.gz", "org/model", None)
    env = container_environment(settings, gpus=4)
    assert env == {"OPTION_TENSOR_PARALLEL_DEGREE": "4", "OPTION_ROLLING_BATCH": "vllm"}
