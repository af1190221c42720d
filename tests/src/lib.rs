pub mod frames;
pub mod kernel;
pub mod net;
