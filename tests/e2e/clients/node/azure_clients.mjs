// Unmodified Azure SDK for JavaScript in a job: ManagedIdentityCredential, then
// DefaultAzureCredential with @azure/storage-blob.
// Usage: node azure_clients.mjs USER BLOB_URL  -> JSON: token claims and storage outcomes.
import { DefaultAzureCredential, ManagedIdentityCredential } from "@azure/identity";
import { BlobServiceClient } from "@azure/storage-blob";

const [user, blobUrl] = process.argv.slice(2);
const other = user === "alice" ? "bob" : "alice";
// Read, not verified: the storage stand-in verifies it; the Python tests verify signatures.
const claims = (token) => JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString());
const outcome = async (call) => {
  try {
    await call();
    return "ok";
  } catch (error) {
    return error.code || String(error.statusCode || error);
  }
};
const listAll = async (container) => {
  const names = [];
  for await (const blob of container.listBlobsFlat()) names.push(blob.name);
  return names;
};

const token = await new ManagedIdentityCredential().getToken("https://storage.azure.com/.default");
const service = new BlobServiceClient(blobUrl, new DefaultAzureCredential());
const mine = service.getContainerClient(`${user}-data`);
const refs = service.getContainerClient("shared-refs");
const result = {
  claims: { oid: claims(token.token).oid, appid: claims(token.token).appid },
  write_own: await outcome(() => mine.getBlockBlobClient("from-node.txt").upload("hi", 2)),
  list_own: await listAll(mine),
  read_shared: (await refs.getBlobClient("refs/genome.fa").downloadToBuffer())
    .toString()
    .split("\n")[0],
  list_other: await outcome(() => listAll(service.getContainerClient(`${other}-data`))),
  write_shared: await outcome(() => refs.getBlockBlobClient("x.txt").upload("x", 1)),
};
console.log(JSON.stringify(result));
