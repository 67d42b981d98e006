/* autograd.c — the reverse-mode graph.
 *
 * Each op output that needs a gradient carries a node (its grad_fn) holding
 * the op's inputs and whatever the backward needs. eng_backward sorts the
 * nodes under the root once (iterative DFS), runs their backwards in
 * reverse order with grad mode off, accumulates into the leaves' .grad, and
 * then frees every node's inputs and saved tensors: the activations of the
 * step go back to the pool as soon as backward returns. A node left freed
 * makes a second backward through it an error. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local bool grad_disabled;
static uint64_t backward_generation;

static bool anomaly_on;
static char anomaly_first[128];

void eng_anomaly_enable(bool on) {
  anomaly_on = on;
  anomaly_first[0] = 0;
}
const char *eng_anomaly_first(void) { return anomaly_first[0] ? anomaly_first : NULL; }

static bool all_finite(const eng_tensor *t) {
  for (int64_t i = 0; i < t->numel; i++)
    if (!isfinite(eng_tensor_get_flat(t, i))) return false;
  return true;
}

static void anomaly_check(const eng_tensor *t, const char *name, const char *phase) {
  if (anomaly_on && !anomaly_first[0] && t && !all_finite(t))
    snprintf(anomaly_first, sizeof anomaly_first, "%s%s", phase, name);
}

bool eng_set_grad_enabled(bool on) {
  bool prev = !grad_disabled;
  grad_disabled = !on;
  return prev;
}
bool eng_grad_enabled(void) { return !grad_disabled; }

bool needs_grad(int n, eng_tensor *const *inputs) {
  if (grad_disabled) return false;
  for (int i = 0; i < n; i++)
    if (inputs[i] && inputs[i]->requires_grad) return true;
  return false;
}

eng_node *node_attach(eng_tensor *out, const char *name, node_backward_fn bw, int ninputs,
                      eng_tensor *const *inputs) {
  anomaly_check(out, name, ""); /* every op passes here, recorded or not */
  if (!needs_grad(ninputs, inputs)) return NULL;
  eng_node *n = calloc(1, sizeof *n);
  if (!n) return NULL;
  n->name = name;
  n->backward = bw;
  n->ninputs = ninputs;
  for (int i = 0; i < ninputs; i++) n->inputs[i] = eng_tensor_retain(inputs[i]);
  out->grad_fn = n;
  out->requires_grad = true;
  return n;
}

void node_save(eng_node *n, int i, eng_tensor *t) {
  if (!n || !t) return;
  eng_tensor_release(n->saved[i]);
  n->saved[i] = eng_detach(t);
}

int eng_set_requires_grad(eng_tensor *t, bool on) {
  if (t->grad_fn)
    return eng_errorf_status("requires_grad: only leaf tensors can change requires_grad "
                             "(this one was made by %s); use detach() for a leaf copy",
                             t->grad_fn->name);
  t->requires_grad = on;
  return 0;
}

bool eng_requires_grad(const eng_tensor *t) { return t->requires_grad; }
bool eng_is_leaf(const eng_tensor *t) { return t->grad_fn == NULL; }
eng_tensor *eng_grad(eng_tensor *t) { return t->grad; }

int eng_set_grad(eng_tensor *t, eng_tensor *g) {
  if (g) {
    if (g->dtype != t->dtype || g->ndim != t->ndim ||
        memcmp(g->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim) != 0)
      return eng_errorf_status("set_grad: grad is %s %s, tensor is %s %s", eng_dtype_name(g->dtype), shp(g),
                               eng_dtype_name(t->dtype), shp(t));
    eng_tensor_retain(g);
  }
  eng_tensor_release(t->grad);
  t->grad = g;
  return 0;
}

const char *eng_grad_fn_name(const eng_tensor *t) {
  if (!t->grad_fn) return "leaf";
  return t->grad_fn->freed ? "freed" : t->grad_fn->name;
}

eng_tensor *sum_to_shape(eng_tensor *g, int ndim, const int64_t *shape) {
  if (g->ndim == ndim && memcmp(g->shape, shape, sizeof(int64_t) * (size_t)ndim) == 0)
    return eng_tensor_retain(g);
  eng_tensor *cur = eng_tensor_retain(g);
  int lead = g->ndim - ndim;
  for (int i = 0; i < lead; i++) {
    eng_tensor *next = eng_sum(cur, 0, false);
    eng_tensor_release(cur);
    if (!next) return NULL;
    cur = next;
  }
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 1 && cur->shape[d] != 1) {
      eng_tensor *next = eng_sum(cur, d, true);
      eng_tensor_release(cur);
      if (!next) return NULL;
      cur = next;
    }
  }
  return cur;
}

/* ---- backward -------------------------------------------------------------- */

typedef struct {
  eng_tensor **items;
  int64_t n, cap;
} tlist;

static int tlist_push(tlist *l, eng_tensor *t) {
  if (l->n == l->cap) {
    int64_t cap = l->cap ? l->cap * 2 : 64;
    eng_tensor **p = realloc(l->items, sizeof *p * (size_t)cap);
    if (!p) return eng_errorf_status("backward: out of memory");
    l->items = p;
    l->cap = cap;
  }
  l->items[l->n++] = t;
  return 0;
}

/* post-order of the non-leaf tensors under root (each retained) */
static int topo_sort(eng_tensor *root, uint64_t gen, tlist *order) {
  typedef struct {
    eng_tensor *t;
    int next_input;
  } frame;
  frame *stack = NULL;
  int64_t sn = 0, scap = 0;
  int rc = 0;
#define PUSH(x)                                                              \
  do {                                                                       \
    if (sn == scap) {                                                        \
      scap = scap ? scap * 2 : 64;                                           \
      frame *ns = realloc(stack, sizeof *ns * (size_t)scap);                 \
      if (!ns) { rc = eng_errorf_status("backward: out of memory"); goto done; } \
      stack = ns;                                                            \
    }                                                                        \
    stack[sn].t = (x);                                                       \
    stack[sn].next_input = 0;                                                \
    sn++;                                                                    \
  } while (0)
  root->grad_fn->mark = gen;
  PUSH(root);
  while (sn > 0) {
    frame *f = &stack[sn - 1];
    eng_node *n = f->t->grad_fn;
    if (n->freed) {
      rc = eng_errorf_status("backward: the graph through this %s was already freed by an earlier "
                             "backward(); run the forward again",
                             n->name);
      goto done;
    }
    if (f->next_input < n->ninputs) {
      eng_tensor *in = n->inputs[f->next_input++];
      if (in && in->grad_fn && in->requires_grad && in->grad_fn->mark != gen) {
        if (in->grad_fn->freed) {
          rc = eng_errorf_status("backward: the graph through %s was already freed by an earlier "
                                 "backward(); run the forward again",
                                 in->grad_fn->name);
          goto done;
        }
        in->grad_fn->mark = gen;
        PUSH(in);
      }
      continue;
    }
    if (tlist_push(order, eng_tensor_retain(f->t))) {
      eng_tensor_release(f->t);
      rc = -1;
      goto done;
    }
    sn--;
  }
done:
  free(stack);
#undef PUSH
  return rc;
}

static int accumulate_leaf(eng_tensor *t, eng_tensor *g) {
  /* a gradient nobody else can see is taken as it is, saving a copy */
  if (!t->grad && g->refcount == 1 && g->storage->refcount == 1 && g->dtype == t->dtype &&
      eng_tensor_is_contiguous(g) && g->ndim == t->ndim &&
      memcmp(g->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim) == 0) {
    t->grad = eng_tensor_retain(g);
    return 0;
  }
  if (!t->grad) {
    eng_tensor *own = tensor_new(t->dtype, t->ndim, t->shape);
    if (!own) return -1;
    if (eng_copy_(own, g)) {
      eng_tensor_release(own);
      return -1;
    }
    t->grad = own;
    return 0;
  }
  return tensor_add_inplace(t->grad, g);
}

static void node_clear(eng_node *n) {
  for (int i = 0; i < NODE_MAX_INPUTS; i++) {
    eng_tensor_release(n->inputs[i]);
    n->inputs[i] = NULL;
  }
  for (int i = 0; i < NODE_MAX_SAVED; i++) {
    eng_tensor_release(n->saved[i]);
    n->saved[i] = NULL;
  }
  eng_tensor_release(n->grad_accum);
  n->grad_accum = NULL;
  free(n->extra);
  n->extra = NULL;
  n->freed = true;
}

int eng_backward(eng_tensor *root, eng_tensor *grad_out) {
  if (!root->requires_grad)
    return eng_errorf_status("backward: the tensor %s does not require grad (no input of the ops "
                             "that made it had requires_grad set)",
                             shp(root));
  if (grad_out) {
    if (grad_out->ndim != root->ndim ||
        memcmp(grad_out->shape, root->shape, sizeof(int64_t) * (size_t)root->ndim) != 0)
      return eng_errorf_status("backward: grad_out is %s but the tensor is %s", shp(grad_out), shp(root));
    eng_tensor_retain(grad_out);
  } else {
    if (root->numel != 1)
      return eng_errorf_status("backward: a gradient can be implied only for a scalar; the tensor is %s "
                               "(pass one of the same shape)",
                               shp(root));
    grad_out = eng_full(root->dtype, root->ndim, root->shape, 1.0);
    if (!grad_out) return -1;
  }
  bool prev = eng_set_grad_enabled(false);
  int rc = 0;
  if (!root->grad_fn) { /* a leaf */
    rc = accumulate_leaf(root, grad_out);
    eng_tensor_release(grad_out);
    eng_set_grad_enabled(prev);
    return rc;
  }
  uint64_t gen = __atomic_add_fetch(&backward_generation, 1, __ATOMIC_RELAXED);
  tlist order = {0};
  rc = topo_sort(root, gen, &order);
  if (rc == 0) {
    root->grad_fn->grad_accum = grad_out;
    grad_out = NULL;
    for (int64_t k = order.n - 1; k >= 0 && rc == 0; k--) {
      eng_node *n = order.items[k]->grad_fn;
      eng_tensor *g = n->grad_accum;
      if (!g) continue;
      eng_tensor *gin[NODE_MAX_INPUTS] = {0};
      if (n->backward(n, g, gin)) {
        char msg[900];
        strncpy(msg, eng_last_error(), sizeof msg - 1);
        msg[sizeof msg - 1] = 0;
        rc = eng_errorf_status("backward of %s: %s", n->name, msg);
      }
      /* drop this node's gradient first, so that views of it handed to the
       * inputs become the sole owners of their storage */
      eng_tensor_release(n->grad_accum);
      n->grad_accum = NULL;
      for (int i = 0; i < n->ninputs; i++) {
        eng_tensor *in = n->inputs[i];
        if (!gin[i]) continue;
        anomaly_check(gin[i], n->name, "backward of ");
        if (rc == 0 && in->requires_grad) {
          if (in->grad_fn) {
            eng_node *m = in->grad_fn;
            if (!m->grad_accum) {
              m->grad_accum = eng_tensor_retain(gin[i]);
            } else {
              eng_tensor *sum = eng_add(m->grad_accum, gin[i]);
              if (!sum) rc = -1;
              else {
                eng_tensor_release(m->grad_accum);
                m->grad_accum = sum;
              }
            }
          } else if (accumulate_leaf(in, gin[i])) {
            rc = -1;
          }
        }
        eng_tensor_release(gin[i]);
      }
    }
  }
  /* a graph found broken before any backward ran is left as it was */
  if (!(rc != 0 && grad_out != NULL))
    for (int64_t k = 0; k < order.n; k++) node_clear(order.items[k]->grad_fn);
  for (int64_t k = 0; k < order.n; k++) eng_tensor_release(order.items[k]);
  free(order.items);
  eng_tensor_release(grad_out);
  eng_set_grad_enabled(prev);
  return rc;
}
