//! Adapter and device selection, honouring `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and
//! `WGPU_POWER_PREF`.

use crate::error::{Error, Result};

/// A wgpu adapter with its device and queue, as the engines borrow them.
#[derive(Clone, Debug)]
pub struct GpuContext {
    /// The adapter the device was made from.
    pub adapter: wgpu::Adapter,
    /// The device; the engines clone this handle.
    pub device: wgpu::Device,
    /// The device's queue; the engines clone this handle.
    pub queue: wgpu::Queue,
    /// Adapter name, backend, driver.
    pub info: wgpu::AdapterInfo,
}

/// How to get an adapter, said whenever none is found.
pub const NO_ADAPTER_HELP: &str = "no GPU adapter found. Install a Vulkan or OpenGL driver \
(on Debian/Ubuntu without a GPU, `apt-get install -y mesa-vulkan-drivers` provides the \
llvmpipe software adapter), check WGPU_BACKEND / WGPU_ADAPTER_NAME, or use `--backend cpu`";

impl GpuContext {
    /// Picks an adapter the way the environment asks (`WGPU_BACKEND` restricts backends,
    /// `WGPU_ADAPTER_NAME` picks by case-insensitive substring) and opens a device with the
    /// adapter's full limits (storage-binding and buffer sizes matter for large grids).
    pub fn from_env() -> Result<Self> {
        let adapters = Self::adapters_from_env()?;
        let adapter = adapters
            .into_iter()
            .next()
            .ok_or_else(|| Error::NoAdapter(NO_ADAPTER_HELP.into()))?;
        Self::from_adapter(adapter)
    }

    /// A context on every adapter the environment allows, the preferred one first.
    pub fn all_from_env() -> Result<Vec<Self>> {
        let adapters = Self::adapters_from_env()?;
        if adapters.is_empty() {
            return Err(Error::NoAdapter(NO_ADAPTER_HELP.into()));
        }
        adapters.into_iter().map(Self::from_adapter).collect()
    }

    /// Every adapter the environment allows, the preferred one first; a `WGPU_BACKEND` naming
    /// no backend wgpu knows is refused by name (wgpu would ignore it and find no adapter).
    pub fn adapters_from_env() -> Result<Vec<wgpu::Adapter>> {
        let backends = match std::env::var("WGPU_BACKEND") {
            Ok(list) => backends_from_list(&list)?,
            Err(_) => wgpu::Backends::all(),
        };
        Self::adapters(backends)
    }

    /// Every adapter on `backends` (`WGPU_ADAPTER_NAME` still filters), the preferred one
    /// first.
    pub fn adapters(backends: wgpu::Backends) -> Result<Vec<wgpu::Adapter>> {
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        descriptor.backends = backends;
        let instance = wgpu::Instance::new(descriptor);
        let mut adapters: Vec<wgpu::Adapter> =
            super::wait(async { Ok(instance.enumerate_adapters(backends).await) })?;
        if let Ok(name) = std::env::var("WGPU_ADAPTER_NAME") {
            let wanted = name.to_lowercase();
            // Name and backend: the same driver often appears once per backend.
            let seen: Vec<String> = (adapters.iter())
                .map(|a| {
                    let info = a.get_info();
                    format!("{} ({})", info.name, info.backend)
                })
                .collect();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&wanted));
            if adapters.is_empty() {
                return Err(Error::NoAdapter(format!(
                    "WGPU_ADAPTER_NAME={name:?} matches no adapter (found: {seen:?})"
                )));
            }
            return Ok(adapters);
        }
        // The adapter wgpu itself would pick (power preference from WGPU_POWER_PREF) first.
        let preferred = super::wait(async {
            let options = wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::from_env().unwrap_or_default(),
                ..Default::default()
            };
            Ok(instance.request_adapter(&options).await)
        })?;
        if let Ok(preferred) = preferred {
            let key = adapter_key(&preferred.get_info());
            adapters.retain(|a| adapter_key(&a.get_info()) != key);
            adapters.insert(0, preferred);
        }
        Ok(adapters)
    }

    /// The adapter the browser offers (WebGPU's `navigator.gpu.requestAdapter()`; natively
    /// the one wgpu prefers) with a device, for the browser build, which cannot block.
    pub async fn request_async() -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = (instance
            .request_adapter(&wgpu::RequestAdapterOptions::default())
            .await)
            .map_err(|e| Error::NoAdapter(format!("no WebGPU adapter: {e}")))?;
        Self::from_adapter_async(adapter).await
    }

    /// Opens a device on `adapter` with the adapter's limits.
    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        super::wait(Self::from_adapter_async(adapter))
    }

    /// [`GpuContext::from_adapter`] as a future, for the browser build.
    pub async fn from_adapter_async(adapter: wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        let downlevel = adapter.get_downlevel_capabilities();
        if !downlevel
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            return Err(Error::NoAdapter(format!(
                "adapter {} ({:?}) has no compute shaders",
                info.name, info.backend
            )));
        }
        if !downlevel
            .flags
            .contains(wgpu::DownlevelFlags::INDIRECT_EXECUTION)
        {
            return Err(Error::NoAdapter(format!(
                "adapter {} ({:?}) has no indirect dispatch",
                info.name, info.backend
            )));
        }
        let (device, queue) = (adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("softvi"),
            required_limits: adapter.limits(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        }))
        .await
        .map_err(|e| {
            Error::NoAdapter(format!(
                "cannot open a device on adapter {} ({:?}): {e}",
                info.name, info.backend
            ))
        })?;
        Ok(Self {
            adapter,
            device,
            queue,
            info,
        })
    }

    /// `"<adapter name> (<backend>)"`, as summaries print it.
    pub fn adapter_label(&self) -> String {
        format!("{} ({})", self.info.name, self.info.backend)
    }
}

fn adapter_key(info: &wgpu::AdapterInfo) -> (String, wgpu::Backend, u32) {
    (info.name.clone(), info.backend, info.device)
}

/// The backends of a `WGPU_BACKEND` value: comma-separated names as wgpu reads them
/// (`vulkan`/`vk`, `gl`/`gles`/`opengl`, `metal`/`mtl`, `dx12`/`d3d12`, `webgpu`, `noop`);
/// an unknown name is an error that names it.
pub fn backends_from_list(list: &str) -> Result<wgpu::Backends> {
    for name in list.split(',').map(str::trim) {
        let known = [
            "vulkan", "vk", "gl", "gles", "opengl", "metal", "mtl", "dx12", "d3d12", "webgpu",
            "noop",
        ];
        if !known.contains(&name.to_lowercase().as_str()) {
            // Bad input, not a missing adapter: `auto` must not fall back to the CPU silently.
            return Err(Error::InvalidInput(format!(
                "WGPU_BACKEND={list:?}: {name:?} is not a wgpu backend; use vulkan, gl, metal, \
                 dx12 or a comma-separated list of them"
            )));
        }
    }
    Ok(wgpu::Backends::from_comma_list(list))
}
