//! The probe programs, one module per kernel hook family.

mod emit;
mod globals;
mod held;
mod maps;
mod proc;
mod sock_io;
mod sock_state;
mod sys_io;
mod tls;
mod tp;
mod unix;
