"""The data path up to raw bases: FASTA reading and windows (`genome`), shard writing and reading
(`shards`), the resumable stream that feeds the trainer (`stream`), and synthetic demo data."""
