"""Secrets: the JWT signing keys (written by the api on rotation) and the bootstrap admin key."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, SecretValue
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from textnlp_cdk.config import StackConfig
from textnlp_cdk.nag import acknowledge


class Credentials(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, config: StackConfig) -> None:
        super().__init__(scope, construct_id)
        removal = RemovalPolicy.RETAIN if config.is_prod else RemovalPolicy.DESTROY
        # An empty key set, not a secret: the api writes the first RS256 key on first use and on rotation.
        self.signing_keys = secretsmanager.Secret(
            self,
            "SigningKeys",
            description="TextNLP JWT signing keys (JSON, managed by the api: POST /admin/signing-keys/rotate)",
            secret_string_value=SecretValue.unsafe_plain_text("{}"),
            removal_policy=removal,
        )
        acknowledge(
            self.signing_keys,
            "AwsSolutions-SMG4",
            "The api rotates the signing keys itself and keeps the previous public key in the JWKS so live "
            "tokens stay valid; a Secrets Manager rotation Lambda would not keep that overlap.",
        )
        self.admin_key = secretsmanager.Secret(
            self,
            "AdminKey",
            description="TextNLP bootstrap admin API key (read by the api at cold start)",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=48, exclude_punctuation=True, include_space=False
            ),
            removal_policy=removal,
        )
        acknowledge(
            self.admin_key,
            "AwsSolutions-SMG4",
            "The bootstrap admin key is replaced by an operator (create a new admin key through the API, then "
            "revoke this one); automatic rotation would lock out scripts that hold it.",
        )
