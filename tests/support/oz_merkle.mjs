// OpenZeppelin StandardMerkleTree from the command line: the reference that on-chain
// verification (UsageAnchors) and the Python tree builder are checked against.
//
//   echo '{"values": [["0x<32 bytes>"], ...], "types": ["bytes32"]}' | node tests/support/oz_merkle.mjs
//
// Prints {"root": "0x..", "leaves": [...], "proofs": [[...], ...]}: leaves and proofs in
// the input's order (the tree itself sorts its leaves). "types" defaults to ["bytes32"].
// node_modules is resolved from the repository root, whatever the working directory.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(new URL("../../package.json", import.meta.url));
const { StandardMerkleTree } = require("@openzeppelin/merkle-tree");

const input = JSON.parse(readFileSync(0, "utf8"));
const values = input.values;
const types = input.types ?? ["bytes32"];
if (!Array.isArray(values) || values.length === 0) {
  process.stderr.write("oz_merkle: expected a non-empty \"values\" list\n");
  process.exit(2);
}

const tree = StandardMerkleTree.of(values, types);
const result = {
  root: tree.root,
  leaves: values.map((value) => tree.leafHash(value)),
  proofs: values.map((_, i) => tree.getProof(i)),
};
process.stdout.write(JSON.stringify(result) + "\n");
