"""SageMaker, S3, Secrets Manager and CloudWatch EMF adapters: boto3 clients created lazily."""
