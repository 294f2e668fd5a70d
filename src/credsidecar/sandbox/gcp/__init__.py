"""GCP in the sandbox: Security Token Service, IAM Credentials and Cloud Storage stand-ins."""
