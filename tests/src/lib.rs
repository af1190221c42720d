pub mod daemon;
pub mod frames;
pub mod kernel;
pub mod netns;
pub mod traffic;
