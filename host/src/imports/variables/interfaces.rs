//! Each variables interface, a thin adapter over [`Variables`]: the types
//! differ, the answers do not.

use wasmtime::component::{Accessor, HasData, Linker};

use super::{Missing, Variables};

mod bindings {
    wasmtime::component::bindgen!({
        inline: "
            package wasi-http-server:variables;
            world variables {
                import wasi:config/store@0.2.0-rc.1;
                import wasi:config/store@0.2.0-draft-2024-09-27;
                import fermyon:spin/variables@2.0.0;
                import spin:variables/variables@3.0.0;
            }
        ",
        path: "../wit",
    });
}

use bindings::fermyon::spin::variables as spin2;
use bindings::spin::variables::variables as spin3;
use bindings::wasi::config0_2_0_draft_2024_09_27::store as config_draft;
use bindings::wasi::config0_2_0_rc_1::store as config_rc1;

/// What a request's variables calls see.
pub struct Config<'a>(pub &'a Variables);

impl config_rc1::Host for Config<'_> {
    fn get(&mut self, key: String) -> Result<Option<String>, config_rc1::Error> {
        Ok(self.0.get(&key).map(str::to_string))
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, config_rc1::Error> {
        Ok(self.0.all())
    }
}

impl config_draft::Host for Config<'_> {
    fn get(&mut self, key: String) -> Result<Option<String>, config_draft::Error> {
        Ok(self.0.get(&key).map(str::to_string))
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, config_draft::Error> {
        Ok(self.0.all())
    }
}

impl spin2::Host for Config<'_> {
    fn get(&mut self, name: String) -> Result<String, spin2::Error> {
        self.0.spin(&name).map_err(|missing| match missing {
            Missing::InvalidName(reason) => spin2::Error::InvalidName(reason),
            Missing::Undefined(reason) => spin2::Error::Undefined(reason),
        })
    }
}

impl spin3::Host for Config<'_> {}

impl<T> spin3::HostWithStore<T> for HasConfig {
    async fn get(accessor: &Accessor<T, Self>, name: String) -> Result<String, spin3::Error> {
        accessor.with(|mut access| {
            access.get().0.spin(&name).map_err(|missing| match missing {
                Missing::InvalidName(reason) => spin3::Error::InvalidName(reason),
                Missing::Undefined(reason) => spin3::Error::Undefined(reason),
            })
        })
    }
}

struct HasConfig;

impl HasData for HasConfig {
    type Data<'a> = Config<'a>;
}

/// Adds every variables interface to `linker`; `spin:variables@3.0.0`, whose
/// function is `async` (WASI 0.3), only where the engine runs WASI 0.3.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    async_abi: bool,
    view: fn(&mut T) -> Config<'_>,
) -> wasmtime::Result<()> {
    config_rc1::add_to_linker::<T, HasConfig>(linker, view)?;
    config_draft::add_to_linker::<T, HasConfig>(linker, view)?;
    spin2::add_to_linker::<T, HasConfig>(linker, view)?;
    if async_abi {
        spin3::add_to_linker::<T, HasConfig>(linker, view)?;
    }
    Ok(())
}
