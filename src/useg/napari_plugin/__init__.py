"""useg's napari plugin (npe2 manifest: ``useg/napari.yaml``; install ``useg[napari]``).

- :mod:`useg.napari_plugin.segment`: what the widget computes, from arrays, without napari or
  Qt, so that it is tested and used like any other library function;
- :mod:`useg.napari_plugin.widget`: the dock widget (magicgui, a napari ``thread_worker``);
- :mod:`useg.napari_plugin.sample`: the sample data (synthetic touching cells).

Nothing here is imported by the rest of useg, and only the widget module imports napari or Qt,
so ``pip install useg`` without the extra keeps working.
"""
