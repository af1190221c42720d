pub mod frames;
pub mod kernel;
