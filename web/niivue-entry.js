// What the browser app imports from NiiVue.
export { Niivue, NVImage, SLICE_TYPE, DRAG_MODE } from "@niivue/niivue";
