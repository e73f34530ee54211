#!/usr/bin/env python3
"""Entry point of the CDK app: ``cdk synth`` / ``cdk deploy`` (or ``python app.py``) run this."""

from __future__ import annotations

from textnlp_cdk import build_app

if __name__ == "__main__":
    app, _ = build_app()
    app.synth()
