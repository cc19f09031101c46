"""Could a SavedModel's graph run something other than computation? Checked before loading.

A SavedModel runs no Python, but its graph runs whatever ops it holds, some of them
while it loads (resource initializers). `unsafe_ops` lists the ops of a SavedModel
outside `ALLOWED_OPS` (ops that compute, `sources.allowed_ops`), scanning every function
and meta graph, without loading it; `HubLayer` calls it before `tf.saved_model.load`.
The config checks of `.keras` and `.h5` files are `sources.trust`'s.
"""

from __future__ import annotations

import os

from finetune_tf.sources.allowed_ops import ALLOWED_OPS

__all__ = ["SAVER_OPS", "unsafe_ops"]

# Ops a SavedModel's checkpoint functions use, allowed there only: `SaveV2` and
# `MergeV2Checkpoints` write the checkpoint (in the save function, which loading never
# runs), `RestoreV2` reads it (in the restore function too). A graph that calls either
# function from anywhere else is refused.
SAVER_OPS = {
    "save": frozenset({"SaveV2", "MergeV2Checkpoints", "ShardedFilename", "RestoreV2"}),
    "restore": frozenset({"RestoreV2", "ShardedFilename"}),
}
_PRINT_STREAMS = frozenset({"stderr", "stdout", "log(info)", "log(warning)", "log(error)"})


def _node_name(tensor_name: str) -> str:
    return tensor_name.lstrip("^").split(":")[0]


def _called_functions(node, functions) -> list[str]:
    """The library functions a node calls: as its op, or through any function attribute
    (`f`, `then_branch`, `body`, `branches`, ...)."""
    called = [node.op] if node.op in functions else []
    for attr in node.attr.values():
        if attr.func.name:
            called.append(attr.func.name)
        called.extend(f.name for f in attr.list.func)
    return called


def _closure(roots, functions) -> set:
    seen, todo = set(), [r for r in roots if r in functions]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in functions[name].node_def:
            todo.extend(c for c in _called_functions(node, functions) if c in functions)
    return seen


def _object_graph_functions(object_graph) -> set:
    """The library functions a loaded SavedModel's objects can call (its `tf.function`
    methods and bare concrete functions)."""
    names = set(object_graph.concrete_functions)
    for node in object_graph.nodes:
        kind = node.WhichOneof("kind")
        if kind == "function":
            names.update(node.function.concrete_functions)
        elif kind == "bare_concrete_function":
            names.add(node.bare_concrete_function.concrete_function_name)
    return names


# Ops that read a file named by their input (`filename`, input 1): allowed on the
# SavedModel's own assets only, so a file cannot read, say, ~/.ssh/id_rsa into a table
# that its outputs then reveal.
_FILE_READERS = frozenset({"InitializeTableFromTextFile", "InitializeTableFromTextFileV2"})


def _file_reads_outside_assets(meta_graph, functions) -> set:
    """File reads whose file name is not one of the SavedModel's assets: in a function, the
    name must be a captured input bound to an `asset` of the object graph; in the graph
    (TF1), a tensor of `asset_file_def`."""
    found = set()
    objects = meta_graph.object_graph_def
    assets = {_node_name(a.tensor_info.name) for a in meta_graph.asset_file_def}
    for node in meta_graph.graph_def.node:
        if node.op in _FILE_READERS and _node_name(node.input[1]) not in assets:
            found.add(f"{node.op} reading a file that is not one of the SavedModel's assets")
    for name, fn in functions.items():
        args = [arg.name for arg in fn.signature.input_arg]
        bound = (
            list(objects.concrete_functions[name].bound_inputs)
            if name in (objects.concrete_functions)
            else []
        )
        for node in fn.node_def:
            if node.op not in _FILE_READERS:
                continue
            source = _node_name(node.input[1])
            index = args.index(source) - (len(args) - len(bound)) if source in args else -1
            kind = objects.nodes[bound[index]].WhichOneof("kind") if index >= 0 else None
            if kind != "asset":
                found.add(f"{node.op} reading a file that is not one of the SavedModel's assets")
    return found


def _meta_graph_problems(meta_graph) -> set:
    graph = meta_graph.graph_def
    functions = {fn.signature.name: fn for fn in graph.library.function}
    top = {node.name: node for node in graph.node}
    saver = meta_graph.saver_def
    save_node = _node_name(saver.save_tensor_name) if saver.save_tensor_name else None
    restore_node = _node_name(saver.restore_op_name) if saver.restore_op_name else None

    def roots(name):
        node = top.get(name)
        return _called_functions(node, functions) if node is not None else []

    restore_fns = _closure(roots(restore_node), functions)
    save_fns = _closure(roots(save_node), functions) - restore_fns
    saver_fns = save_fns | restore_fns
    found = set()

    def check(nodes, extra, may_call_saver):
        for node in nodes:
            if node.op in functions:
                pass  # a call, checked through the callee
            elif node.op == "PrintV2":
                stream = "stderr"  # the default, which a SavedModel leaves out
                if "output_stream" in node.attr:
                    stream = node.attr["output_stream"].s.decode(errors="replace")
                if stream not in _PRINT_STREAMS:
                    found.add(f"PrintV2 to {stream}")
            elif node.op not in ALLOWED_OPS and node.op not in extra:
                found.add(node.op)
            if not may_call_saver:
                for name in _called_functions(node, functions):
                    if name in saver_fns:
                        found.add(f"a call to the checkpoint function {name}")
            if save_node and node.name != save_node and save_node in map(_node_name, node.input):
                found.add(f"a use of the checkpoint-writing node {save_node}")

    saver_nodes = {save_node, restore_node}
    check([n for n in graph.node if n.name not in saver_nodes], (), False)
    check([top[n] for n in saver_nodes if n in top], (), True)
    for name, fn in functions.items():
        if name in restore_fns:
            check(fn.node_def, SAVER_OPS["restore"], True)
        elif name in save_fns:
            check(fn.node_def, SAVER_OPS["save"], True)
        else:
            check(fn.node_def, (), False)
    found |= _file_reads_outside_assets(meta_graph, functions)
    # Nor may the object graph make one of them a method of the loaded object (`__call__`
    # bound to the save function would write on every call).
    for name in _object_graph_functions(meta_graph.object_graph_def) & saver_fns:
        found.add(f"the checkpoint function {name} exposed as a callable")
    if save_node:  # nothing a loader runs may fetch the checkpoint-writing node
        fetched = [t.name for s in meta_graph.signature_def.values() for t in s.outputs.values()]
        for collection in meta_graph.collection_def.values():
            fetched.extend(collection.node_list.value)
        if save_node in map(_node_name, fetched):
            found.add(f"a use of the checkpoint-writing node {save_node}")
    return found


def unsafe_ops(path: str) -> list[str]:
    """The ops of a SavedModel outside `ALLOWED_OPS`, in any meta graph and any function
    of its library (initializers included), without loading it: nothing in it runs.

    Also reported: `PrintV2` to a file, and any use of the SavedModel's checkpoint
    functions (the only place `SaveV2`/`RestoreV2` may appear) from elsewhere, its object
    graph (the loaded object's methods) included.

    Examples:
        >>> import tempfile, tensorflow as tf
        >>> from finetune_tf.sources.savedmodel_trust import unsafe_ops
        >>> class Writes(tf.Module):
        ...     @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        ...     def __call__(self, x):
        ...         tf.io.write_file("/tmp/anything", "text")
        ...         return x
        >>> path = tempfile.mkdtemp()
        >>> tf.saved_model.save(Writes(), path)
        >>> unsafe_ops(path)
        ['WriteFile']
    """
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    found = set()
    for meta_graph in saved_model.meta_graphs:
        found |= _meta_graph_problems(meta_graph)
    return sorted(found)
