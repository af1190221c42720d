pub mod exporter;
pub mod frames;
pub mod kernel;
pub mod prometheus;
