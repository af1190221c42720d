pub mod daemon;
pub mod exporter;
pub mod frames;
pub mod kernel;
pub mod net;
pub mod netns;
pub mod prometheus;
pub mod traffic;
