"""Azure in the sandbox: Entra, Blob storage and Resource Manager stand-ins over HTTPS with a
local CA."""
