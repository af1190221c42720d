//! What every object of this crate needs besides its programs: a panic handler (the verifier
//! proves no panic is reachable; one is still needed to link) and the license the kernel reads.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
