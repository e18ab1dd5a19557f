//! Policy-hook components of a shape no guest toolchain here emits (several
//! linear memories, a table grown by millions of elements), forged from a
//! hand-written core module and the repository's WIT with wasm-encoder and
//! wit-component, to check that the sandbox caps hold for whatever a
//! component may contain, not only for what rustc or componentize-py make.
//!
//! The hook allows every request; before answering, `authorize-request`
//! grows each extra memory by `grow_pages` pages and the table by
//! `table_grow` elements (both results dropped: a guest that ignores a
//! failed growth).

use wasm_encoder::{
    CodeSection, ConstExpr, ExportKind, ExportSection, Function, FunctionSection, GlobalSection, GlobalType, HeapType, MemorySection,
    MemoryType, Module, RefType, TableSection, TableType, TypeSection, ValType,
};

/// What the forged hook holds and does.
#[derive(Default, Clone, Copy)]
pub struct Forge {
    /// Linear memories besides the one the canonical ABI uses (each starts
    /// empty).
    pub extra_memories: u32,
    /// Pages (64 KiB) each extra memory grows by in `authorize-request`.
    pub grow_pages: u32,
    /// Elements the table grows by in `authorize-request`.
    pub table_grow: u32,
}

const POLICY: &str = "stategate:gateway/policy@0.3.0";
/// Where the answer (`decision::allow`, all zero bytes) is returned: the
/// allocator hands out memory only from `HEAP` on.
const RET: i32 = 16;
const HEAP: i32 = 1024;

fn core_module(f: Forge) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32; 4], [ValType::I32]); // cabi_realloc
    types.ty().function([ValType::I32; 2], [ValType::I32]); // string -> retptr
    let mut funcs = FunctionSection::new();
    funcs.function(0).function(1).function(1);
    let mut tables = TableSection::new();
    tables.table(TableType { element_type: RefType::FUNCREF, table64: false, minimum: 1, maximum: None, shared: false });
    let mut memories = MemorySection::new();
    let memory = |minimum| MemoryType { minimum, maximum: None, memory64: false, shared: false, page_size_log2: None };
    memories.memory(memory(2));
    for _ in 0..f.extra_memories {
        memories.memory(memory(0));
    }
    let mut globals = GlobalSection::new();
    globals.global(GlobalType { val_type: ValType::I32, mutable: true, shared: false }, &ConstExpr::i32_const(HEAP));
    let mut exports = ExportSection::new();
    exports
        .export("memory", ExportKind::Memory, 0)
        .export("cabi_realloc", ExportKind::Func, 0)
        .export(&format!("{POLICY}#authorize-request"), ExportKind::Func, 1)
        .export(&format!("{POLICY}#authorize-response"), ExportKind::Func, 2);

    let mut code = CodeSection::new();
    // cabi_realloc(old_ptr, old_size, align, new_size): a bump allocator.
    let mut realloc = Function::new([(1, ValType::I32)]);
    realloc
        .instructions()
        .global_get(0)
        .local_get(2)
        .i32_add()
        .i32_const(1)
        .i32_sub()
        .i32_const(0)
        .local_get(2)
        .i32_sub()
        .i32_and()
        .local_tee(4)
        .local_get(3)
        .i32_add()
        .global_set(0)
        .local_get(4)
        .end();
    code.function(&realloc);
    let mut request = Function::new([]);
    let mut body = request.instructions();
    for m in 1..=f.extra_memories {
        body.i32_const(f.grow_pages as i32).memory_grow(m).drop();
    }
    if f.table_grow > 0 {
        body.ref_null(HeapType::FUNC).i32_const(f.table_grow as i32).table_grow(0).drop();
    }
    body.i32_const(RET).end();
    code.function(&request);
    let mut response = Function::new([]);
    response.instructions().i32_const(RET).end();
    code.function(&response);

    let mut module = Module::new();
    module
        .section(&types)
        .section(&funcs)
        .section(&tables)
        .section(&memories)
        .section(&globals)
        .section(&exports)
        .section(&code);
    module.finish()
}

/// The component bytes of a forged policy hook.
pub fn policy_hook(f: Forge) -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
    let (package, _) = resolve.push_dir(&wit).expect("the repository's WIT parses");
    let world = resolve.select_world(&[package], Some("policy-hook")).expect("world policy-hook");
    let mut module = core_module(f);
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8).expect("metadata");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("a core module wit-component accepts")
        .validate(true)
        .encode()
        .expect("a valid component")
}

/// A forged hook written to `dir/<name>.wasm`.
pub fn write_policy_hook(dir: &std::path::Path, name: &str, f: Forge) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, policy_hook(f)).unwrap();
    path
}
