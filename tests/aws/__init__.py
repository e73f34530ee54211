"""Tests of the AWS adapters against moto and a local SageMaker runtime server."""
