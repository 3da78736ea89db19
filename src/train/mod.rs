pub mod adamw;
