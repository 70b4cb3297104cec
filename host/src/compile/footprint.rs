//! What a component asks of the instance pool, read from its bytes before it
//! is compiled: how many core instances, memories and tables one instance of
//! it creates, and how large its memories and tables start. The pool is sized
//! from this (`pool.rs`), so a 20 KB Rust hello and a 20 MB Python
//! interpreter each get the reset strategy that is cheapest for them.

use wasmtime::Result;
use wasmtime::wasmparser::{CanonicalFunction, CanonicalOption, Instance, Parser, Payload};

/// Sizes counted over every core module and nested component in the file.
/// A module instantiated twice would need twice its memories; the counts
/// here take each once, which is what every toolchain emits, and the pool
/// adds headroom above them (wasmtime checks the real counts against the pool
/// when it loads the component, so a miss is a clear startup error, never a
/// failed request).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Core wasm modules instantiated (the `instantiate`s in the component's
    /// core instance sections, nested components included).
    pub core_instances: u32,
    /// Linear memories defined by the core modules.
    pub memories: u32,
    /// Tables defined by the core modules.
    pub tables: u32,
    /// Bytes of the largest linear memory at instantiation (its initial
    /// size, which covers its data image).
    pub largest_memory: u64,
    /// Elements of the largest table at instantiation.
    pub largest_table: u64,
    /// Whether the component uses the component model's async ABI (WASI 0.3
    /// guests do), which only the engine with it enabled compiles: an
    /// `async` lift or lower, or a built-in beyond resources (`task.return`,
    /// streams, futures, waitables...).
    pub async_abi: bool,
}

impl Footprint {
    /// Reads the footprint of the component in `bytes`, skipping code.
    pub fn of(bytes: &[u8]) -> Result<Self> {
        let mut footprint = Footprint::default();
        for payload in Parser::new(0).parse_all(bytes) {
            match payload? {
                Payload::InstanceSection(instances) => {
                    for instance in instances {
                        // A bundle of exports (`FromExports`) takes no slot.
                        if let Instance::Instantiate { .. } = instance? {
                            footprint.core_instances += 1;
                        }
                    }
                }
                Payload::MemorySection(memories) => {
                    for memory in memories {
                        let memory = memory?;
                        let page = 1u64 << memory.page_size_log2.unwrap_or(16);
                        footprint.memories += 1;
                        footprint.largest_memory = footprint
                            .largest_memory
                            .max(memory.initial.saturating_mul(page));
                    }
                }
                Payload::ComponentCanonicalSection(functions) => {
                    for function in functions {
                        footprint.async_abi |= uses_async_abi(&function?);
                    }
                }
                Payload::TableSection(tables) => {
                    for table in tables {
                        let table = table?;
                        footprint.tables += 1;
                        footprint.largest_table = footprint.largest_table.max(table.ty.initial);
                    }
                }
                _ => {}
            }
        }
        Ok(footprint)
    }
}

/// Whether `function` needs the async ABI: the built-ins WASI 0.2 guests
/// use are lifts, lowers and resource handles without async options.
fn uses_async_abi(function: &CanonicalFunction) -> bool {
    match function {
        CanonicalFunction::Lift { options, .. } | CanonicalFunction::Lower { options, .. } => {
            options.iter().any(|option| {
                matches!(
                    option,
                    CanonicalOption::Async | CanonicalOption::Callback(_)
                )
            })
        }
        CanonicalFunction::ResourceNew { .. }
        | CanonicalFunction::ResourceDrop { .. }
        | CanonicalFunction::ResourceRep { .. } => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what the text says, nested modules included.
    #[test]
    fn counts_instances_memories_and_tables() {
        let wasm = wat::parse_str(
            r#"(component
                (core module $a
                    (memory (export "mem") 3)
                    (table 10 funcref))
                (core module $b
                    (memory 1 100)
                    (table 7 funcref)
                    (table 2 externref))
                (core instance $ia (instantiate $a))
                (core instance (instantiate $b))
                (alias core export $ia "mem" (core memory $mem))
                (core instance (export "mem" (memory $mem)))
            )"#,
        )
        .unwrap();
        let footprint = Footprint::of(&wasm).unwrap();
        assert_eq!(
            footprint,
            Footprint {
                core_instances: 2,
                memories: 2,
                tables: 3,
                largest_memory: 3 << 16,
                largest_table: 10,
                async_abi: false,
            }
        );
    }

    /// An `async` lift is the async ABI; a plain lift and resource handles
    /// are not.
    #[test]
    fn tells_the_async_abi() {
        let component = |lift: &str| {
            wat::parse_str(format!(
                r#"(component
                    (core module $m
                        (memory (export "mem") 1)
                        (func (export "f") (result i32) unreachable))
                    (core instance $i (instantiate $m))
                    (type $r (resource (rep i32)))
                    (core func (canon resource.drop $r))
                    (func (export "f") (result u32)
                        (canon lift (core func $i "f") {lift}))
                )"#
            ))
            .unwrap()
        };
        assert!(!Footprint::of(&component("")).unwrap().async_abi);
        assert!(Footprint::of(&component("async")).unwrap().async_abi);
    }
}
