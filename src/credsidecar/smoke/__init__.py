"""`credsidecar smoke`: from inside a job, call every emulated endpoint the way the SDKs do.

    model.py    Status, Result, Violation: the vocabulary of every check
    client.py   a bounded HTTP/1.1 client (http.client, one overall deadline)
    aws.py      container endpoint and IMDSv2
    gcp.py      GCE metadata server and the --secret-only external-account file
    azure.py    App Service and IMDS managed-identity paths
    runner.py   which checks the environment configures; runs them, in order, to one deadline
    report.py   the table and the JSON

The checks read only the job's environment (what `credsidecar env` prints) and the files it
names; they import no SDK, no asyncio and no aiohttp: smoke runs at the start of every task and
as a probe, so its import time is kept small. They never print a secret: identities are shown
as key id prefixes, account ids, emails, client ids and token claims, never the tokens.
"""
