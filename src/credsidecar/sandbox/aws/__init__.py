"""AWS in the sandbox: moto (S3 and IAM, IAM enforced) behind an STS stand-in that validates
web-identity tokens against the roles' trust policies."""
