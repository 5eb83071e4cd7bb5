//! # ideator-envs
//!
//! Training environments (pretrain, posttrain, command), the executor that turns an idea into a validated recipe
//! and a run, and the backends that run it (local slots, Slurm).
