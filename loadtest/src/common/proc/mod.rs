//! Readers of `/proc`: CPU time of processes and of the machine, and a
//! process's resident memory.

pub mod cpu;
pub mod cpu_split;
pub mod rss;
